"""``flowblending-accel tiny``: the router on a tiny random-weight pipeline, end to end, on the CPU."""

from __future__ import annotations

import torch

from . import testing
from .api import apply_flowblending_, remove_flowblending_
from .schedulers import make_scheduler

_FAMILIES = {
    "wan": (testing.tiny_wan_pair, testing.tiny_wan_pipeline, testing.wan_call_kwargs, "frames"),
    "ltx": (testing.tiny_ltx_pair, testing.tiny_ltx_pipeline, testing.ltx_call_kwargs, "frames"),
    "sd": (testing.tiny_unet_pair, testing.tiny_sd_pipeline, testing.sd_call_kwargs, "images"),
}


def tiny_run(family: str, schedule: str, steps: int, scheduler: str | None = None, axis: str = "step") -> str:
    """Run large-only and ``schedule`` from the same seed; return a human report."""
    make_pair, make_pipeline, call_kwargs, output_field = _FAMILIES[family]
    large, small = make_pair()
    pipe = make_pipeline(large, make_scheduler(scheduler) if scheduler else None)
    with torch.inference_mode():
        baseline = getattr(pipe(**call_kwargs(steps)), output_field)
        router = apply_flowblending_(pipe, small, schedule, axis=axis)
        try:
            plan = router.plan(steps, **_plan_kwargs(family, steps))
            routed = getattr(pipe(**call_kwargs(steps)), output_field)
            stats = router.last_run
            router.count_flops = True  # a second run counts FLOPs; counting slows calls, so not the timed one
            pipe(**call_kwargs(steps))
            flops = router.last_run.flops_per_model
        finally:
            remove_flowblending_(pipe)
    per_step = {m: flops[m] / n for m, n in stats.steps_per_model.items() if n and m in flops}
    size = {m: sum(p.numel() for p in model.parameters()) for m, model in (("large", large), ("small", small))}
    lines = [
        f"tiny {family} pipeline ({type(pipe).__name__}): large {size['large']:,} params, small {size['small']:,} params",
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


def _plan_kwargs(family: str, steps: int) -> dict:
    if family != "ltx":
        return {}
    # LTXPipeline passes its own sigma grid linspace(1, 1/N, N) to the scheduler.
    import numpy as np

    return {"sigmas": np.linspace(1.0, 1.0 / steps, steps)}
