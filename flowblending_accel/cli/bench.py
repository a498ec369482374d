"""``flowblending-accel bench``: the cumulative stack table in one run."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..accelerators import spec_help
from .common import resolve_device, whole_number

DEFAULT_STACK = ["dpm++:10", "fbc:0.05", "compile"]


def register(commands) -> None:
    bench = commands.add_parser(
        "bench",
        help="baseline -> +FlowBlending -> +step reduction -> +cache -> +compile ... in one run",
        description=(
            "Measure the stack cumulatively in one process: each row adds one accelerator to the previous "
            "row. Rows run interleaved after a warm-up that touches every model, stage and CFG branch; each "
            "reports wall time (median, IQR), speedup vs the large-only baseline, the time-ideal speedup and "
            "efficiency, per-model calls and FLOPs, peak memory, recompiles and quality vs the baseline "
            "output. Writes bench.json, github-action-benchmark JSON, bench.md and bench.png."
        ),
    )
    source = bench.add_mutually_exclusive_group()
    source.add_argument(
        "--pair", type=Path, default=None, help="a demo-pair folder (default: the embedded pair)"
    )
    source.add_argument(
        "--random-weights",
        default=None,
        metavar="PRESET",
        help="real-size random configs, e.g. wan2.1-14b+1.3b (GPU) or tiny-wan",
    )
    source.add_argument("--large", default=None, help="pipeline folder or hub id (with --small)")
    bench.add_argument("--small", default=None, help="folder or hub id holding the small denoiser")
    bench.add_argument("--schedule", default="L40-S40-L20", help="FlowBlending stages (default L40-S40-L20)")
    bench.add_argument(
        "--stack",
        nargs="*",
        default=DEFAULT_STACK,
        help=f"accelerators added row by row (default {' '.join(DEFAULT_STACK)}): {spec_help()}",
    )
    bench.add_argument(
        "--repeats", type=whole_number(1), default=5, help="timed interleaved rounds (default 5)"
    )
    bench.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    bench.add_argument(
        "--dtype",
        default="bfloat16",
        choices=("float32", "bfloat16", "float16"),
        help="random/pretrained weights dtype (default bfloat16)",
    )
    bench.add_argument("--height", type=whole_number(1), default=480)
    bench.add_argument("--width", type=whole_number(1), default=832)
    bench.add_argument("--frames", type=whole_number(1), default=61)
    bench.add_argument("--steps", type=whole_number(1), default=50)
    bench.add_argument(
        "--prompt", default="A polar bear playing guitar", help="prompt for pretrained pipelines"
    )
    bench.add_argument("--threads", type=whole_number(1), default=2, help="torch CPU threads (default 2)")
    bench.add_argument("--output", type=Path, default=Path("flowblending-bench"), help="results folder")
    bench.add_argument("--overwrite", action="store_true", help="replace results already in --output")
    bench.set_defaults(run=run)


def _target(args):
    import torch

    from ..targets.embedded import embedded_target
    from ..targets.folders import pretrained_target
    from ..targets.presets import random_wan_target

    dtype = getattr(torch, args.dtype)
    if args.random_weights:
        return random_wan_target(
            args.random_weights, args.device, dtype, args.height, args.width, args.frames, args.steps
        )
    if args.large:
        return pretrained_target(args.large, args.small, args.device, dtype, args.prompt, args.steps)
    return embedded_target(args.pair, args.device)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..accelerators import Stack, StackTarget, as_configs, validate_configs
    from ..bench.report import output_quality, write_bench
    from ..bench.runner import cumulative_rows, measure_rows, summarise
    from ..support.env import device_name, versions
    from ..support.files import check_output_folder, free_output_folder
    from ..support.progress import progress
    from ..targets.presets import check_preset

    # Everything a user can get wrong is refused here, before any model is built.
    device = resolve_device(args.device)
    configs = as_configs(args.stack)
    validate_configs(configs, device)
    check_output_folder(args.output)
    if args.random_weights:
        check_preset(args.random_weights)
    if args.large and not args.small:
        raise ValueError("--large needs --small (the folder or hub id of the small denoiser).")
    torch.set_num_threads(args.threads)
    target = _target(args)
    Stack.of(configs).validate(StackTarget.of(target.pipe, target.small))  # what depends on the pipeline
    rows = cumulative_rows(args.schedule, args.stack)
    folder = free_output_folder(args.output, args.overwrite, marker="bench.md")
    with progress("benchmarking rows", (len(rows) + 1) * (args.repeats + 2)) as advance:
        results = measure_rows(target, rows, args.repeats, progress=advance)
    table = summarise(results, output_quality if target.quality else (lambda *_: None))
    context = {
        "target": target.name,
        "description": target.description,
        "device": device_name(device),
        "versions": versions(),
        "repeats": args.repeats,
        "schedule": args.schedule,
        "stack": args.stack,
        "command": args.command_line,
        "threads": args.threads,
    }
    write_bench(folder, table, context)
    print((folder / "bench.md").read_text())
    print(f"bench.json, github-action-benchmark JSON, bench.md and bench.png written to {folder}/")
    return 0
