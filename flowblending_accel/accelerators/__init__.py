"""Accelerators that stack with FlowBlending: one module per accelerator (its config dataclass, its runtime
class and its mapping onto the library it drives), a registry of their spec names, and the pipeline verbs.

``apply_flowblending_(pipe, small, FlowBlendingConfig("L40-S40-L20", accelerators=["dpm++:25", "fbc:0.05"]))``
(or with configs: ``[StepReduction("dpm++", 25), FirstBlockCache(0.05), RegionalCompile()]``) applies them to
every routed model in the order that works, puts the router outermost on top, and lets the router tell each
accelerator when a run or a segment starts. ``remove_flowblending_(pipe)`` undoes all of it;
``flowblending(...)`` is the block form. Reading the accelerator modules imports no torch (each imports it
where it acts); the verbs and the stack, which need the core's router, load on first use (PEP 562).
"""

from importlib import import_module

# Importing each accelerator module registers its config, in the order ``--help`` lists them in.
# isort: off
from .steps import StepReduction
from .caches import (
    FirstBlockCache,
    MagCache,
    PyramidAttentionBroadcast,
    SeaCache,
    TaylorSeer,
    calibrate_mag_ratios,
)
from .deepcache import DeepCache
from .cachedit import CacheDiT
from .compile import RegionalCompile, dynamo_counts
from .attention import AttentionBackend, best_attention_backend
from .quantize import Quantize
from .tensorrt import TensorRT
from .offload import OFFLOAD_MODES, OffloadInactive, enable_offload
from .context_parallel import ContextParallel

# isort: on
from .registry import (
    KIND_ORDER,
    AcceleratorConfig,
    as_configs,
    parse_accelerator,
    register_accelerator,
    spec_help,
    validate_configs,
    validate_for_family,
)
from .runtime import Accelerator, RoutedModels

_RUNTIME = {
    "FlowBlendingConfig": "stack",
    "Stack": "stack",
    "apply_flowblending_": "stack",
    "remove_flowblending_": "stack",
    "flowblending": "stack",
    "applied_stack": "stack",
    "StackOwnsArgumentWarning": "calls",
}

__all__ = [
    "KIND_ORDER",
    "OFFLOAD_MODES",
    "Accelerator",
    "AcceleratorConfig",
    "AttentionBackend",
    "CacheDiT",
    "ContextParallel",
    "DeepCache",
    "FirstBlockCache",
    "FlowBlendingConfig",
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
    "apply_flowblending_",
    "flowblending",
    "remove_flowblending_",
    "applied_stack",
    "best_attention_backend",
    "as_configs",
    "calibrate_mag_ratios",
    "dynamo_counts",
    "enable_offload",
    "parse_accelerator",
    "register_accelerator",
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
