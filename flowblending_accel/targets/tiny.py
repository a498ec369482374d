"""Tiny random-weight targets (Wan, LTX, SD, Flux) from :mod:`flowblending_accel.tiny_models`: routing and
counts on a CPU in seconds, no quality. The check gate's built-in scenarios run on them."""

from __future__ import annotations

from .. import tiny_models
from .base import Target
from .prompts import Prompt

BUILDERS = {
    "wan": (tiny_models.tiny_wan_pair, tiny_models.tiny_wan_pipeline, tiny_models.wan_call_kwargs),
    "ltx": (tiny_models.tiny_ltx_pair, tiny_models.tiny_ltx_pipeline, tiny_models.ltx_call_kwargs),
    "sd": (tiny_models.tiny_unet_pair, tiny_models.tiny_sd_pipeline, tiny_models.sd_call_kwargs),
    "flux": (tiny_models.tiny_flux_pair, tiny_models.tiny_flux_pipeline, tiny_models.flux_call_kwargs),
}


def tiny_target(family: str = "wan", steps: int = 10, scheduler=None) -> Target:
    if family not in BUILDERS:
        raise ValueError(f"tiny family {family!r} is unknown; choose one of {', '.join(BUILDERS)}.")
    make_pair, make_pipeline, call_kwargs = BUILDERS[family]
    large, small = make_pair()
    pipe = make_pipeline(large, scheduler)
    base = {key: value for key, value in call_kwargs(steps=steps).items() if key != "generator"}
    return Target(
        f"tiny {family}",
        pipe,
        small,
        "cpu",
        f"tiny random {family} pipeline, {steps} steps",
        base,
        [Prompt(None)],
        quality=False,
    )
