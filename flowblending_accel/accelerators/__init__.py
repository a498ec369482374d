"""Accelerators that stack with FlowBlending, one module per kind, all with the same few methods.

``apply_stack(pipe, small, "L40-S40-L20", ["dpm++:25", "fbc", "compile"])`` applies them in the order that
works (scheduler, attention backend, cache, compile, engines) and the router outermost on top, and lets the
router tell each accelerator when a run or a segment starts. ``remove_stack(pipe)`` undoes all of it.
"""

from __future__ import annotations

from typing import Any

from .backends import AttentionBackend, TensorRTEngines
from .base import Accelerator, Pair, Stack
from .cachedit import CacheDiT
from .caches import KINDS as CACHE_KINDS
from .caches import DiffusersCache, calibrate_mag_ratios
from .compile import RegionalCompile
from .deepcache import DeepCacheUNets
from .offload import OffloadInactive
from .steps import StepReduction

__all__ = [
    "Accelerator", "AttentionBackend", "CacheDiT", "DeepCacheUNets", "DiffusersCache", "OffloadInactive", "Pair",
    "RegionalCompile",
    "Stack", "StepReduction", "TensorRTEngines", "apply_stack", "calibrate_mag_ratios", "parse_accelerator",
    "remove_stack",
]

SPEC_HELP = (
    "dpm++:25 | unipc:20 | euler:30 | heun:25 (step reduction), fbc[:threshold] | taylorseer | pab | seacache | "
    "magcache (diffusers caches), deepcache[:interval] (UNets), cache-dit, compile, attn:<backend>, tensorrt, "
    "offload[:prefetch_steps] (inactive model on CPU)"
)
_STACK_ATTRIBUTE = "_flowblending_stack"


def parse_accelerator(spec: str | Accelerator) -> Accelerator:
    """``"dpm++:25"`` -> ``StepReduction("dpm++", 25)``; see :data:`SPEC_HELP` for every form."""
    if isinstance(spec, Accelerator):
        return spec
    name, _, value = spec.partition(":")
    if name in ("dpm++", "unipc", "euler", "heun", "dpm++2s", "ddim", "euler-vp", "dpm++-vp"):
        return StepReduction(name, int(value) if value else 25)
    if name == "fbc":
        return DiffusersCache("fbc", **({"threshold": float(value)} if value else {}))
    if name in CACHE_KINDS:
        return DiffusersCache(name, calibrate=True) if name == "magcache" and value == "calibrate" else DiffusersCache(name)
    if name == "deepcache":
        return DeepCacheUNets(int(value) if value else 3)
    if name == "cache-dit":
        return CacheDiT()
    if name == "compile":
        return RegionalCompile()
    if name == "attn":
        return AttentionBackend(value or "native")
    if name in ("tensorrt", "trt"):
        return TensorRTEngines()
    if name == "offload":
        return OffloadInactive(int(value) if value else 1)
    raise ValueError(f"accelerator {spec!r} is unknown; write one of: {SPEC_HELP}.")


def apply_stack(pipe: Any, small, schedule: Any = "L40-S40-L20", accelerators=(), **router_options: Any):
    """Apply ``accelerators`` to both models, then the router on top; returns ``(router, stack)``."""
    from ..api import apply_flowblending_, flowblending_routers

    if flowblending_routers(pipe) or hasattr(pipe, _STACK_ATTRIBUTE):
        raise ValueError("FlowBlending is already applied to this pipeline; call remove_stack(pipe) first.")
    stack = Stack([parse_accelerator(a) for a in accelerators])
    pair = Pair(pipe, small, router_options.pop("denoiser", "transformer" if hasattr(pipe, "transformer") else "unet"))
    stack.apply(pair)
    try:
        router = apply_flowblending_(pipe, small, schedule, denoisers=(pair.denoiser,), **router_options)
    except BaseException:
        stack.remove(pair)
        raise
    for accelerator in stack.ordered():
        router.add_listener(accelerator)
    setattr(pipe, _STACK_ATTRIBUTE, (stack, pair))
    return router, stack


def remove_stack(pipe: Any) -> None:
    """Remove the router and every accelerator ``apply_stack`` put on ``pipe``."""
    from ..api import remove_flowblending_

    if not hasattr(pipe, _STACK_ATTRIBUTE):
        raise ValueError("no FlowBlending stack is applied to this pipeline.")
    stack, pair = getattr(pipe, _STACK_ATTRIBUTE)
    remove_flowblending_(pipe)
    stack.remove(pair)
    delattr(pipe, _STACK_ATTRIBUTE)
