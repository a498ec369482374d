"""flowblending-accel: FlowBlending (large-small-large stage-aware sampling) for diffusers pipelines.

``import flowblending_accel`` gives what a user writes: the verb pair ``apply_flowblending_`` /
``remove_flowblending_`` and the block form ``flowblending``, with ``FlowBlendingConfig`` (the whole spec) and
the accelerator configs; the run's stats and routers; the listener types; the warnings; and
``register_family``. The core (schedules, plans, the router's run session), the accelerators, metrics and the
tools (bench, check, analysis, demo, cli) are subpackages. Public names are imported lazily (PEP 562), so
``flowblending-accel --help`` does not pay for importing diffusers and torch.
"""

from importlib import import_module

__version__ = "0.1.0"

# What a user writes: the verb pair and its block form, the configs (FlowBlendingConfig and each
# accelerator's), what a run reports (stats, the routers), the listener types, the warnings, and the family
# registry's extension point. Everything else stays importable from its subpackage.
_ACCELERATOR_CONFIGS = (
    "StepReduction",
    "FirstBlockCache",
    "MagCache",
    "PyramidAttentionBroadcast",
    "SeaCache",
    "TaylorSeer",
    "DeepCache",
    "CacheDiT",
    "RegionalCompile",
    "AttentionBackend",
    "Quantize",
    "TensorRT",
    "ContextParallel",
)
_EXPORTS = {
    "apply_flowblending_": "accelerators.stack",
    "remove_flowblending_": "accelerators.stack",
    "flowblending": "accelerators.stack",
    "FlowBlendingConfig": "accelerators.stack",
    "applied_stack": "accelerators.stack",
    "StackOwnsArgumentWarning": "accelerators.calls",
    **dict.fromkeys(_ACCELERATOR_CONFIGS, "accelerators"),
    "Schedule": "core.schedule",
    "FlowBlendingWarning": "core.schedule",
    "ModelRouter": "core.router",
    "RunStats": "core.stats",
    "flowblending_stats": "core.api",
    "flowblending_routers": "core.api",
    "add_flowblending_listener": "core.api",
    "RouterListener": "core.listeners",
    "CallEvent": "core.listeners",
    "SegmentStart": "core.listeners",
    "Family": "core.families",
    "register_family": "core.families",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flowblending_accel' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
