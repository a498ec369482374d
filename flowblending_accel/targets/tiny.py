"""Tiny random-weight targets (Wan, LTX, SD, Flux) from :mod:`flowblending_accel.testing`: routing and
counts on a CPU in seconds, no quality. The check gate's built-in scenarios run on them."""

from __future__ import annotations

from .. import testing
from .base import Target
from .prompts import Prompt

BUILDERS = {
    "wan": (testing.tiny_wan_pair, testing.tiny_wan_pipeline, testing.wan_call_kwargs),
    "ltx": (testing.tiny_ltx_pair, testing.tiny_ltx_pipeline, testing.ltx_call_kwargs),
    "sd": (testing.tiny_unet_pair, testing.tiny_sd_pipeline, testing.sd_call_kwargs),
    "flux": (testing.tiny_flux_pair, testing.tiny_flux_pipeline, testing.flux_call_kwargs),
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
