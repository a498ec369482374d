"""``flowblending-accel bench --suite ...``: the GPU evidence suite in parts, its estimate, and its report."""

from __future__ import annotations

import argparse
from pathlib import Path

SUITE_MODES = ("gpu", "rehearsal", "estimate", "render")
# What the suite sets itself: a bench option given beside --suite is refused, naming it.
SUITE_CLASHES = (
    "target",
    "large",
    "small",
    "pair",
    "height",
    "width",
    "frames",
    "steps",
    "schedule",
    "stack",
)
DEFAULT_SUITE_OUTPUT = Path("flowblending-suite")


def add_suite_options(bench) -> None:
    suite = bench.add_argument_group(
        "the GPU evidence suite (benchmarks/gpu/README.md)",
        "Real-size Wan 2.1 14B+1.3B and LTX 13B+2B with random weights, in parts of at most 4 minutes: "
        "smoke, wan, stack, individual, ltx. Each part prints its estimated wall time first, runs each "
        "section in its own process with its own time box, and appends every measured row to "
        "<output>/<part>.jsonl as it is measured. --gpu-memory SIZE refuses rows whose estimated peak is "
        "above 90 % of SIZE instead of the GPU's own memory.",
    )
    suite.add_argument(
        "--suite",
        nargs="+",
        metavar=("MODE", "DIR"),
        default=None,
        help="gpu: the parts on this CUDA GPU; rehearsal: the same parts on tiny presets on the CPU; "
        "estimate [gpu|rehearsal]: print every part's estimate; render DIR...: merge part files "
        "(folders or .jsonl) into suite.json, suite.md and suite.png",
    )
    suite.add_argument("--part", nargs="+", default=None, help="the parts to run, in order (default: all)")
    suite.add_argument(
        "--resume",
        nargs="+",
        type=Path,
        default=[],
        help="earlier part files or folders: rows measured there on the same device, versions and sizes "
        "are not measured again",
    )
    suite.add_argument("--started", type=float, default=None, help=argparse.SUPPRESS)  # run.sh's clock


def run_suite_command(args: argparse.Namespace, bench_output: Path) -> int:
    mode, rest = args.suite[0], args.suite[1:]
    if mode not in SUITE_MODES:
        raise ValueError(f"--suite {mode!r}: choose one of {', '.join(SUITE_MODES)}.")
    given = [f"--{name.replace('_', '-')}" for name in SUITE_CLASHES if getattr(args, name, None) is not None]
    if given:
        raise ValueError(f"--suite sets its own targets and sizes; drop {', '.join(given)}.")
    output = None if args.output == bench_output else args.output
    if mode == "render":
        return _render(rest, output, args.command_line)
    if mode == "estimate":
        return _estimate(rest)
    if rest:
        raise ValueError(
            f"--suite {mode} takes no folders ({' '.join(rest)}); use --resume for earlier parts."
        )
    return _run_parts(mode, args, output or DEFAULT_SUITE_OUTPUT / mode)


def _estimate(rest: list[str]) -> int:
    from ..bench.suite import suite_named
    from ..bench.suite.costs import PROFILES, part_seconds
    from ..bench.suite.parts import estimate_lines

    suite = suite_named(rest[0] if rest else "gpu")
    total = 0.0
    for part in suite.parts:
        print("\n".join(estimate_lines(suite, part)))
        total += part_seconds(suite, part.name, PROFILES[suite.name])["total"]
    count = len(suite.parts)
    print(f"all {count} parts of the {suite.name} suite: estimated {total:.0f} s ({total / 60:.1f} min)")
    return 0


def _run_parts(mode: str, args: argparse.Namespace, output: Path) -> int:
    from ..bench.suite import suite_named
    from ..bench.suite.journal import part_files
    from ..bench.suite.parts import PartRunner
    from ..support.files import check_output_folder
    from ..support.memory import parse_size
    from .common import resolve_device

    suite = suite_named(mode)
    parts = [suite.part(name) for name in (args.part or suite.part_names)]
    gpu_memory = parse_size(args.gpu_memory) if args.gpu_memory else None
    part_files(args.resume)  # every --resume path exists, before anything runs
    check_output_folder(output)
    resolve_device(suite.device)  # the gpu suite is refused here, with the way out, without a CUDA GPU
    worst = 0
    for part in parts:
        runner = PartRunner(suite, part, output, args.resume, gpu_memory, args.started)
        worst = max(worst, runner.run())
        if worst == 143:
            break
    print(f"part files in {output}/; render them with: flowblending-accel bench --suite render {output}")
    return worst


def _render(paths: list[str], output: Path | None, command: str) -> int:
    from ..bench.suite import suite_named
    from ..bench.suite.journal import read_lines
    from ..bench.suite.render import render
    from ..support.files import check_output_folder

    if not paths:
        raise ValueError("--suite render needs the part files: --suite render DIR_OR_FILE [...]")
    lines = list(read_lines([Path(p) for p in paths]))
    suites = sorted({line["suite"] for line in lines if line.get("suite")})
    if len(suites) != 1:
        found = ", ".join(suites) if suites else "no suite line at all"
        raise ValueError(f"--suite render: the part files hold {found}; render one suite's files at a time.")
    suite = suite_named(suites[0])
    if output is None:
        output = _default_render_folder(suite.name, lines)
    check_output_folder(output)
    render([Path(p) for p in paths], output, suite, command)
    print((output / "suite.md").read_text())
    print(f"suite.json, suite.md and suite.png written to {output}/")
    return 0


def _default_render_folder(suite: str, lines: list[dict]) -> Path:
    if suite != "gpu":
        return DEFAULT_SUITE_OUTPUT / f"{suite}-report"
    devices = sorted({line["setup"]["device"] for line in lines if line.get("setup")})
    device = devices[0] if len(devices) == 1 else "several-devices"
    slug = "".join(c if c.isalnum() else "-" for c in device.split(":", 1)[-1].strip().lower()).strip("-")
    return Path("benchmarks/results/gpu") / slug
