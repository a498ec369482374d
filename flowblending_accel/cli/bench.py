"""``flowblending-accel bench``: the cumulative stack table in one run, on any target."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..accelerators import spec_help
from .common import add_threads_option, whole_number
from .suite import add_suite_options, run_suite_command
from .targeting import add_target_options, setting, target_settings

if TYPE_CHECKING:
    from ..accelerators import AcceleratorConfig
    from ..core.distributed import DistContext
    from ..core.schedule import Schedule

DEFAULT_OUTPUT = Path("flowblending-bench")


def register(commands) -> None:
    bench = commands.add_parser(
        "bench",
        help="baseline -> +FlowBlending -> +step reduction -> +cache -> +compile ... in one run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Measure the stack cumulatively in one process: each row adds one accelerator to the previous\n"
            "row. Rows run interleaved after a warm-up that touches every model, stage and CFG branch; each\n"
            "reports wall time (median, IQR), speedup vs the large-only baseline, the time-ideal speedup\n"
            "and "
            "efficiency, per-model calls and FLOPs, peak memory, recompiles and quality vs the baseline\n"
            "output. Each round times the first call of the target's prompts. Writes bench.json,\n"
            "github-action-benchmark JSON, bench.md and bench.png."
        ),
    )
    add_target_options(bench)
    bench.add_argument("--schedule", default=None, help="FlowBlending stages (default L40-S40-L20)")
    bench.add_argument(
        "--stack",
        nargs="*",
        default=None,
        help="accelerators added row by row (default: a step reduction the pipeline's family takes, at half "
        f"its steps, a feature cache it takes, and compile; e.g. dpm++:10 fbc:0.05 compile): {spec_help()}",
    )
    bench.add_argument(
        "--repeats", type=whole_number(1), default=5, help="timed interleaved rounds (default 5)"
    )
    add_threads_option(bench)
    bench.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results folder")
    bench.add_argument("--overwrite", action="store_true", help="replace results already in --output")
    add_suite_options(bench)
    bench.set_defaults(run=run, extra="demo")


def run(args: argparse.Namespace) -> int:
    if args.suite is not None:
        return run_suite_command(args, DEFAULT_OUTPUT)
    from ..accelerators import as_configs, validate_configs, validate_for_family
    from ..core.schedule import PAPER_SCHEDULE, Schedule
    from ..support.files import check_output_folder
    from ..targets.resolve import check_target, known_family

    # Everything a user can get wrong is refused here, before anything heavy is imported or built. The
    # schedule and the stack are parsed here, once: everything downstream takes the parsed objects. Under
    # torchrun every rank measures and rank 0 writes (see bench/ranks.py).
    if os.environ.get("RANK", "0") == "0":  # torchrun's rank of this process; the others write nothing
        check_output_folder(args.output)
    options, config = target_settings(args)
    schedule = Schedule.parse(setting(args, config, "schedule", PAPER_SCHEDULE))
    given_stack = setting(args, config, "stack", None)
    configs = None if given_stack is None else as_configs(given_stack)
    validate_configs(configs or [], options.device)
    checked = check_target(options)
    known = known_family(options, checked)
    if known is not None:  # a cache or solver the pipeline's family cannot take, before loading it
        validate_for_family(configs or [], *known)
    from ..core.distributed import joined

    with joined() as ranks:  # under torchrun: every rank measures, rank 0 writes
        return _measure(args, options, checked, schedule, configs, ranks)


def _measure(
    args, options, checked, schedule: Schedule, given: list[AcceleratorConfig] | None, ranks: DistContext
) -> int:
    from ..accelerators.defaults import default_stack
    from ..bench.ranks import across_ranks
    from ..bench.report import output_quality, write_bench
    from ..bench.runner import cumulative_rows, measure_rows, summarise
    from ..support.env import device_name, versions
    from ..support.files import free_output_folder
    from ..support.progress import progress
    from ..support.threads import use_threads
    from ..targets.resolve import build_target

    threads = use_threads(args.threads)
    target = build_target(options, checked)
    stack = list(given) if given is not None else _default(target, options, default_stack)
    rows = cumulative_rows(schedule, stack)  # each row's stack is checked once, before the first round
    folder = free_output_folder(args.output, args.overwrite, marker="bench.md") if ranks.is_main else None
    steps = (len(rows) + 1) * (args.repeats + 2)
    with progress("benchmarking rows", steps, enabled=ranks.is_main) as advance:
        results = measure_rows(target, rows, args.repeats, progress=advance)
    table = summarise(results, output_quality if target.quality else (lambda *_: None))
    if ranks.active:
        table = across_ranks(table, ranks)
    if not ranks.is_main:
        return 0
    context = {
        "target": target.name,
        "description": target.description,
        "device": device_name(options.device),
        "versions": versions(),
        "repeats": args.repeats,
        "schedule": schedule.as_written,
        "stack": [config.as_written for config in stack],
        "command": args.command_line,
        "threads": threads.describe(),
        "ranks": ranks.world_size,
    }
    write_bench(folder, table, context)
    print((folder / "bench.md").read_text())
    print(f"bench.json, github-action-benchmark JSON, bench.md and bench.png written to {folder}/")
    return 0


def _default(target, options, default_stack) -> list[AcceleratorConfig]:
    """The stack bench measures when none is given: members the target's family and this machine take."""
    from ..accelerators import RoutedModels

    denoisers = RoutedModels.of(target.pipe, target.small).denoisers
    stack = default_stack(target.family, denoisers, target.steps, options.device)
    written = " ".join(config.spec for config in stack)
    print(f"stack: {written} (the default for a {target.family.name} pipeline)", file=sys.stderr)
    return stack
