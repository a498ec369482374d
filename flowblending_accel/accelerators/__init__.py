"""Accelerators that stack with FlowBlending: a registry of config dataclasses, one runtime module per kind.

``apply_stack(pipe, small, "L40-S40-L20", ["dpm++:25", "fbc:0.05", "compile"])`` (or with configs:
``[StepReduction("dpm++", 25), FirstBlockCache(0.05), RegionalCompile()]``) applies them to every routed
model in the order that works, puts the router outermost on top, and lets the router tell each accelerator
when a run or a segment starts. ``remove_stack(pipe)`` undoes all of it; ``accelerated(...)`` is the block
form. The configs and the registry import no torch; the runtime names load on first use (PEP 562).
"""

from importlib import import_module

from .configs import (
    OFFLOAD_MODES,
    AttentionBackend,
    CacheDiT,
    DeepCache,
    FirstBlockCache,
    MagCache,
    OffloadInactive,
    PyramidAttentionBroadcast,
    Quantize,
    RegionalCompile,
    SeaCache,
    StepReduction,
    TaylorSeer,
    TensorRT,
    best_attention_backend,
)
from .registry import KIND_ORDER, AcceleratorConfig, parse_accelerator, register_accelerator, spec_help

_RUNTIME = {
    "Accelerator": "runtime",
    "RoutedModels": "runtime",
    "Stack": "stack",
    "accelerated": "stack",
    "applied_stack": "stack",
    "apply_stack": "stack",
    "remove_stack": "stack",
    "validate_configs": "registry",
    "validate_for_family": "registry",
    "as_configs": "registry",
    "calibrate_mag_ratios": "caches",
    "StackOwnsArgumentWarning": "calls",
    "dynamo_counts": "compile",
    "enable_offload": "offload",
}

__all__ = [
    "KIND_ORDER",
    "OFFLOAD_MODES",
    "Accelerator",
    "AcceleratorConfig",
    "AttentionBackend",
    "CacheDiT",
    "DeepCache",
    "FirstBlockCache",
    "MagCache",
    "OffloadInactive",
    "PyramidAttentionBroadcast",
    "Quantize",
    "RegionalCompile",
    "SeaCache",
    "Stack",
    "RoutedModels",
    "StackOwnsArgumentWarning",
    "StepReduction",
    "TaylorSeer",
    "TensorRT",
    "accelerated",
    "applied_stack",
    "apply_stack",
    "best_attention_backend",
    "as_configs",
    "calibrate_mag_ratios",
    "dynamo_counts",
    "enable_offload",
    "parse_accelerator",
    "register_accelerator",
    "remove_stack",
    "spec_help",
    "validate_configs",
    "validate_for_family",
]


def __getattr__(name: str):
    if name in _RUNTIME:
        value = getattr(import_module(f".{_RUNTIME[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flowblending_accel.accelerators' has no attribute {name!r}")
