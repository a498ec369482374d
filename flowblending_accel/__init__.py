"""flowblending-accel: FlowBlending (large-small-large stage-aware sampling) for diffusers pipelines.

``import flowblending_accel`` gives the core library only: schedules and plans, the router, its run
session and listeners, the families registry and the verbs. Accelerators, metrics and the tools (bench,
check, analysis, demo, cli) are subpackages on top of it. Public names are imported lazily (PEP 562), so
``flowblending-accel --help`` does not pay for importing diffusers and torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "FlowBlendingConfig": "api",
    "add_flowblending_listener": "api",
    "apply_flowblending_": "api",
    "flowblending": "api",
    "flowblending_routers": "api",
    "flowblending_stats": "api",
    "remove_flowblending_": "api",
    "Family": "families",
    "family_for": "families",
    "register_family": "families",
    "CallEvent": "listeners",
    "RouterListener": "listeners",
    "SegmentStart": "listeners",
    "Plan": "plan",
    "ModelRouter": "router",
    "Schedule": "schedule",
    "Stage": "schedule",
    "FlowBlendingWarning": "schedule",
    "RunSession": "session",
    "SolverView": "solver",
    "CallRecord": "stats",
    "RunStats": "stats",
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
