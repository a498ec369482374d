"""``flowblending-accel plan``: the per-step model table a schedule will follow on a scheduler."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..core.named_schedulers import SCHEDULER_NAMES
from ..core.schedule import PAPER_SCHEDULE
from .common import positive_number, whole_number


def register(commands) -> None:
    plan = commands.add_parser(
        "plan",
        help="print the per-step model table of a schedule",
        description="Lay a schedule onto a scheduler's real step grid and print the table a run will follow.",
    )
    plan.add_argument(
        "schedule", nargs="?", default=PAPER_SCHEDULE, help="stages, e.g. L40-S40-L20 (default)"
    )
    plan.add_argument("--steps", type=whole_number(1), default=50, help="num_inference_steps (default 50)")
    plan.add_argument("--scheduler", choices=SCHEDULER_NAMES, default="unipc", help="solver (default unipc)")
    plan.add_argument("--shift", type=positive_number, default=5.0, help="flow shift (default 5.0, Wan 2.1)")
    plan.add_argument("--axis", choices=("step", "sigma"), default="step", help="stage axis (default step)")
    plan.add_argument(
        "--flops",
        nargs=2,
        type=positive_number,
        metavar=("LARGE", "SMALL"),
        help="FLOPs per step of each model, to print the FLOP share (e.g. 598.9 62.57 for Wan 14B/1.3B)",
    )
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="a calibrate result (calibration.json): "
        "carry its schedule to --scheduler/--shift/--steps on the "
        "sigma axis and say whether a recalibration is advisable (exit 3 if so)",
    )
    memory = plan.add_argument_group(
        "memory plan",
        "--memory --large FOLDER --small FOLDER: the estimated peak GPU memory of every offload mode, from "
        "the folders' safetensors headers and configs (no weight is read)",
    )
    memory.add_argument("--memory", action="store_true", help="print the memory plan instead of the steps")
    memory.add_argument("--large", metavar="FOLDER", help="the pipeline folder")
    memory.add_argument("--small", metavar="FOLDER", help="the small denoiser's folder")
    memory.add_argument("--gpu-memory", metavar="SIZE", help="say which modes fit SIZE (e.g. 24GiB)")
    memory.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="bfloat16")
    where = "(default: the folder's flowblending_defaults.json, else the pipeline's default)"
    memory.add_argument("--height", type=whole_number(1), help=f"pixels {where}")
    memory.add_argument("--width", type=whole_number(1), help=f"pixels {where}")
    memory.add_argument("--frames", type=whole_number(1), help=f"video frames {where}")
    plan.set_defaults(run=run)


def _memory_plan(args: argparse.Namespace) -> int:
    from ..support.env import require_extra
    from ..support.memory import parse_size
    from ..targets.folders import check_folders
    from ..targets.memory import FIT_SHARE, plan_for_folders, table
    from ..targets.options import TargetOptions
    from ..targets.sizes import check_folder_size, describe, folder_size

    if not (args.large and args.small):
        raise ValueError("--memory needs the folders: --large PIPELINE_FOLDER --small SMALL_FOLDER.")
    require_extra("demo", "flowblending-accel plan --memory")  # the pipelines' text encoders
    budget = parse_size(args.gpu_memory) if args.gpu_memory else None
    sizes = {name: getattr(args, name) for name in ("height", "width", "frames")}
    options = TargetOptions(large=args.large, small=args.small, dtype=args.dtype, **sizes)
    pair = check_folders(args.large, args.small)
    if pair.pipeline_class is None:
        raise ValueError(f"--large {args.large}: --memory reads a local folder, not a hub id.")
    size, source = folder_size(options, pair)
    check_folder_size(pair, args.dtype, size, None, source)  # as bench does: a size the models cannot take
    peaks = plan_for_folders(pair, options, None)
    name = pair.pipeline_class.__name__
    print(f"Memory plan: {name} from {args.large}, small from {args.small}, {args.dtype}")
    print(f"size: {describe(size)} ({source})")
    print("\n".join(table(peaks, budget)))
    print(
        "Estimates: weights from the safetensors headers, activations from one denoiser call on the meta "
        f"device; the VAE's decoding is not included; a mode fits at most {FIT_SHARE:.0%} of the memory."
    )
    return 0


def run(args: argparse.Namespace) -> int:
    if args.memory:
        return _memory_plan(args)
    from ..core.named_schedulers import make_scheduler
    from ..core.plan import Plan
    from ..core.schedule import Schedule

    scheduler = make_scheduler(args.scheduler, args.shift)
    flops = dict(zip(("large", "small"), args.flops, strict=True)) if args.flops else None
    if args.calibration is not None:
        return _plan_calibrated(args, scheduler, flops)
    plan = Plan.for_scheduler(Schedule.parse(args.schedule, args.axis), scheduler, args.steps)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.table(flops))
    for advice in plan.schedule.advice() + plan.advice():
        print(f"warning: {advice}", file=sys.stderr)
    return 0


def _plan_calibrated(args: argparse.Namespace, scheduler, flops) -> int:
    from ..analysis.transfer import Grid, transfer
    from ..core.schedule import Schedule

    try:
        result = json.loads(args.calibration.read_text())["calibration"]
        grid, schedule = Grid.from_dict(result["grid"]), Schedule.parse(result["schedule"])
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"--calibration {args.calibration}: not a calibrate result with a grid ({error}); "
            "rerun `flowblending-accel calibrate`."
        ) from error
    carried = transfer(schedule.models_for_step_count(len(grid.noise)), grid, scheduler, args.steps)
    if args.json:
        print(
            json.dumps(
                {
                    "schedule": str(carried.schedule),
                    "axis": "sigma",
                    "recalibrate": carried.recalibrate,
                    "reasons": carried.reasons,
                    "plan": carried.plan.to_dict(),
                },
                indent=2,
            )
        )
    else:
        print(
            f"calibrated {result['schedule']} on {grid.scheduler} (shift {grid.shift}, "
            f"{len(grid.noise)} steps)"
            f" -> {carried.schedule} on the sigma axis\n{carried.plan.table(flops)}"
        )
        print(
            "recalibration advisable: " + "; ".join(carried.reasons)
            if carried.recalibrate
            else "transfers: no coarser small-model steps than calibrated, same solver kind and noise range"
        )
    return 3 if carried.recalibrate else 0
