"""``flowblending-accel tiny``: the router on a tiny random-weight pipeline, end to end, on the CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.named_schedulers import SCHEDULER_NAMES
from ..core.schedule import PAPER_SCHEDULE
from .common import whole_number

FAMILIES = ("wan", "ltx", "sd", "flux")
SAVED_FAMILIES = ("wan", "wan2.2", "ltx", "sd", "flux")


def register(commands) -> None:
    tiny = commands.add_parser(
        "tiny",
        help="route a tiny random-weight pipeline on the CPU",
        description=(
            "Build a tiny random-weight pipeline and a smaller model of the same family, run the large-only "
            "baseline and the schedule from the same seed, and print the step table and per-model counts. "
            "Random weights show the routing, not the quality: `flowblending-accel demo` shows that."
        ),
    )
    tiny.add_argument(
        "--family",
        choices=SAVED_FAMILIES,
        default="wan",
        help="pipeline family (default wan; wan2.2: --save only)",
    )
    tiny.add_argument("--schedule", default=PAPER_SCHEDULE, help="stages (default L40-S40-L20)")
    tiny.add_argument("--steps", type=whole_number(1), default=20, help="num_inference_steps (default 20)")
    tiny.add_argument(
        "--scheduler", choices=SCHEDULER_NAMES, default=None, help="solver (default: the pipeline's)"
    )
    tiny.add_argument("--axis", choices=("step", "sigma"), default="step", help="stage axis (default step)")
    tiny.add_argument(
        "--save",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="instead, save the tiny pipeline (with a tiny text stack: it takes prompt strings) to "
        "FOLDER/pipeline and its small denoiser to FOLDER/small, to try the tools' --large/--small offline",
    )
    tiny.set_defaults(run=run, extra="demo")


def run(args: argparse.Namespace) -> int:
    if args.save is not None:
        from ..support.files import check_output_folder
        from ..tiny_models import save_tiny_folders

        check_output_folder(args.save)
        large, small = save_tiny_folders(args.save, args.family)
        print(f"saved: --large {large} --small {small}")
        return 0
    if args.family not in FAMILIES:
        raise ValueError(
            f"--family {args.family}: the routing report runs on {', '.join(FAMILIES)}; --save any."
        )
    print(tiny_report(args.family, args.schedule, args.steps, args.scheduler, args.axis))
    return 0


def tiny_report(
    family: str, schedule: str, steps: int, scheduler: str | None = None, axis: str = "step"
) -> str:
    """Run large-only and ``schedule`` from the same seed; return a human report."""
    import torch

    from ..accelerators import FlowBlendingConfig, flowblending
    from ..core.named_schedulers import make_scheduler
    from ..metrics.flops import run_flops
    from ..targets.tiny import tiny_target

    target = tiny_target(family, steps, make_scheduler(scheduler) if scheduler else None)
    pipe, small, kwargs = target.pipe, target.small, target.call_kwargs(0)
    with torch.inference_mode():
        baseline = target.output(pipe(**kwargs))
        with flowblending(pipe, small, FlowBlendingConfig(schedule, axis=axis)) as router:
            plan = router.plan(steps, **_plan_kwargs(target.family.passes_sigmas, steps))
            routed = target.output(pipe(**target.call_kwargs(0)))
            stats = router.last_run
    # A second run counts FLOPs: counting slows calls, so not the one above.
    flops, _ = run_flops(pipe, small, plan.schedule, target.call_kwargs(0))
    per_step = {m: flops[m] / n for m, n in stats.steps_per_model.items() if n and m in flops}
    size = {
        m: sum(p.numel() for p in model.parameters())
        for m, model in (("large", target.large), ("small", small))
    }
    lines = [
        f"tiny {family} pipeline ({type(pipe).__name__}): large {size['large']:,} params, "
        f"small {size['small']:,} params",
        plan.table(per_step if len(per_step) == 2 else None),
        "",
        stats.table(),
        "FLOPs (counted in a second run): "
        + ", ".join(f"{m} {flops[m] / 1e6:.2f} MFLOP" for m in sorted(flops)),
        "",
        f"max |routed - large-only| on the latent output: {(routed - baseline).abs().max().item():.4f} "
        "(random weights: this shows the routing, not quality)",
    ]
    return "\n".join(lines)


def _plan_kwargs(passes_sigmas: bool, steps: int) -> dict:
    if not passes_sigmas:
        return {}
    # LTX and Flux pipelines pass their own sigma grid linspace(1, 1/N, N) to the scheduler.
    import numpy as np

    return {"sigmas": np.linspace(1.0, 1.0 / steps, steps)}
