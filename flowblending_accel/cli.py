"""``flowblending-accel``: FlowBlending for diffusers pipelines, from the command line.

Each subcommand lives in its own function; ``main`` only dispatches. Run ``flowblending-accel --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .schedulers import SCHEDULER_NAMES

DESCRIPTION = """\
FlowBlending: the large model denoises the early and the late stage of the trajectory, a small model of
the same family the middle ("L40-S40-L20"). These commands plan, run and measure it.

commands:
  demo          compare LLL, LSL, LSS, SLL, SSS on the embedded trained pair: report + grid (the main job)
  bench         baseline, +FlowBlending, +step reduction, +cache, +compile ... measured in one run
  analyze       velocity divergence between the two models along the trajectory (and what predicts harm)
  calibrate     choose stage boundaries automatically under a quality tolerance or FLOP budget
  check         CI gate: fail a change that regresses routing, FLOPs, recompiles, caching or speedup
  plan          print which model runs each solver step for a schedule and a scheduler
  tiny          route a tiny random-weight pipeline (Wan, LTX or SD) on the CPU and print what happened
  train-demo    train the embedded pair (resumable) or, with --classifier, its metrics classifier
  export-demo   write a training checkpoint as a diffusers pipeline folder
"""


def _add_plan(commands) -> None:
    plan = commands.add_parser(
        "plan",
        help="print the per-step model table of a schedule",
        description="Lay a schedule onto a scheduler's real step grid and print the table a run will follow.",
    )
    plan.add_argument("schedule", nargs="?", default="L40-S40-L20", help="stages, e.g. L40-S40-L20 (default)")
    plan.add_argument("--steps", type=int, default=50, help="num_inference_steps (default 50)")
    plan.add_argument("--scheduler", choices=SCHEDULER_NAMES, default="unipc", help="solver (default unipc)")
    plan.add_argument("--shift", type=float, default=5.0, help="flow shift (default 5.0, Wan 2.1)")
    plan.add_argument("--axis", choices=("step", "sigma"), default="step", help="stage axis (default step)")
    plan.add_argument(
        "--flops", nargs=2, type=float, metavar=("LARGE", "SMALL"),
        help="FLOPs per step of each model, to print the FLOP share (e.g. 598.9 62.57 for Wan 14B/1.3B)",
    )
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument(
        "--calibration", type=Path, default=None,
        help="a calibrate result (calibration.json): carry its schedule to --scheduler/--shift/--steps on the "
             "sigma axis and say whether a recalibration is advisable (exit 3 if so)",
    )
    plan.set_defaults(run=run_plan)


def _add_tiny(commands) -> None:
    tiny = commands.add_parser(
        "tiny",
        help="route a tiny random-weight pipeline on the CPU",
        description=(
            "Build a tiny random-weight pipeline and a smaller model of the same family, run the large-only "
            "baseline and the schedule from the same seed, and print the step table and per-model counts. "
            "Random weights show the routing, not the quality: `flowblending-accel demo` shows that."
        ),
    )
    tiny.add_argument("--family", choices=("wan", "ltx", "sd"), default="wan", help="pipeline family (default wan)")
    tiny.add_argument("--schedule", default="L40-S40-L20", help="stages (default L40-S40-L20)")
    tiny.add_argument("--steps", type=int, default=20, help="num_inference_steps (default 20)")
    tiny.add_argument("--scheduler", choices=SCHEDULER_NAMES, default=None, help="solver (default: the pipeline's)")
    tiny.add_argument("--axis", choices=("step", "sigma"), default="step", help="stage axis (default step)")
    tiny.set_defaults(run=run_tiny)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowblending-accel", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"flowblending-accel {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    from .analysis.commands import add_analyze, add_calibrate
    from .bench.commands import add_bench
    from .check.commands import add_check
    from .demo.commands import add_demo, add_export, add_train

    for add in (add_demo, add_bench, add_analyze, add_calibrate, add_check, _add_plan, _add_tiny, add_train, add_export):
        add(commands)
    return parser


def run_plan(args: argparse.Namespace) -> int:
    from .schedule import Schedule
    from .schedulers import make_scheduler

    scheduler = make_scheduler(args.scheduler, args.shift)
    flops = dict(zip(("large", "small"), args.flops, strict=True)) if args.flops else None
    if args.calibration is not None:
        return _plan_calibrated(args, scheduler, flops)
    plan = Schedule.parse(args.schedule, args.axis).plan(scheduler, args.steps)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.table(flops))
    return 0


def _plan_calibrated(args: argparse.Namespace, scheduler, flops) -> int:
    from .analysis.transfer import Grid, transfer
    from .schedule import Schedule

    try:
        result = json.loads(args.calibration.read_text())["calibration"]
        grid, schedule = Grid.from_dict(result["grid"]), Schedule.parse(result["schedule"])
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise SystemExit(f"--calibration {args.calibration}: not a calibrate result with a grid ({error}); "
                         "rerun `flowblending-accel calibrate`.") from error
    carried = transfer(schedule.models_for_step_count(len(grid.noise)), grid, scheduler, args.steps)
    if args.json:
        print(json.dumps({"schedule": str(carried.schedule), "axis": "sigma", "recalibrate": carried.recalibrate,
                          "reasons": carried.reasons, "plan": carried.plan.to_dict()}, indent=2))
    else:
        print(f"calibrated {result['schedule']} on {grid.scheduler} (shift {grid.shift}, {len(grid.noise)} steps)"
              f" -> {carried.schedule} on the sigma axis\n{carried.plan.table(flops)}")
        print("recalibration advisable: " + "; ".join(carried.reasons) if carried.recalibrate else
              "transfers: no coarser small-model steps than calibrated, same solver kind and noise range")
    return 3 if carried.recalibrate else 0


def run_tiny(args: argparse.Namespace) -> int:
    from .tiny_run import tiny_run

    print(tiny_run(args.family, args.schedule, args.steps, args.scheduler, args.axis))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # transformers warns about optional image backends whenever diffusers imports its pipelines.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except (ValueError, TypeError) as error:
        print(f"flowblending-accel {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
