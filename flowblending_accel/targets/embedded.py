"""The embedded target: the trained moving-digits pair shipped in the package (offline, CPU-friendly)."""

from __future__ import annotations

from typing import Any

from .base import Target


def embedded_target(
    path=None, device: str = "cpu", prompts: int | list[str] = 4, steps: int = 20, guidance_scale: float = 3.0
) -> Target:
    """The shipped pair; ``prompts`` is a count (spread over the 40 prompts) or the prompts themselves.
    Sample ``i`` of a call with seed ``s`` gets the generator seeded ``s + i``."""
    from ..demo.data import all_prompts
    from ..demo.models import demo_call_kwargs, load_demo_pipeline

    pipe, small = load_demo_pipeline(path)
    pipe.to(device)
    small.to(device)
    chosen = (
        list(prompts) if not isinstance(prompts, int) else all_prompts()[:: max(1, 40 // prompts)][:prompts]
    )

    def call_kwargs(seed: int) -> dict[str, Any]:
        return demo_call_kwargs(chosen, [seed + i for i in range(len(chosen))], steps, guidance_scale)

    return Target(
        "embedded moving-digits pair",
        pipe,
        small,
        call_kwargs,
        "frames",
        True,
        device,
        f"embedded pair, {len(chosen)} prompts per call, {steps} steps, CFG {guidance_scale:g}",
    )
