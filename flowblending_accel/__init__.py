"""flowblending-accel: FlowBlending (large-small-large stage-aware sampling) for diffusers pipelines.

``import flowblending_accel`` gives the pipeline verbs (``apply_flowblending_``, ``remove_flowblending_``,
``flowblending``) and the core library: schedules and plans, the router, its run session and listeners, the
families registry. Accelerators, metrics and the tools (bench, check, analysis, demo, cli) are subpackages on
top of it. Public names are imported lazily (PEP 562), so
``flowblending-accel --help`` does not pay for importing diffusers and torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "apply_flowblending_": "accelerators.stack",
    "remove_flowblending_": "accelerators.stack",
    "flowblending": "accelerators.stack",
    "applied_stack": "accelerators.stack",
    "FlowBlendingConfig": "core.api",
    "add_flowblending_listener": "core.api",
    "flowblending_routers": "core.api",
    "flowblending_stats": "core.api",
    "Family": "core.families",
    "family_for": "core.families",
    "register_family": "core.families",
    "CallEvent": "core.listeners",
    "RouterListener": "core.listeners",
    "SegmentStart": "core.listeners",
    "Plan": "core.plan",
    "ModelRouter": "core.router",
    "Schedule": "core.schedule",
    "Stage": "core.schedule",
    "FlowBlendingWarning": "core.schedule",
    "RunSession": "core.session",
    "SolverView": "core.step_grid",
    "CallRecord": "core.stats",
    "RunStats": "core.stats",
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
