"""flowblending-accel: FlowBlending (large-small-large stage-aware sampling) for diffusers pipelines.

Public names are imported lazily (PEP 562), so ``flowblending-accel --help`` does not pay for importing
diffusers and torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "FlowBlendingConfig": "api",
    "apply_flowblending_": "api",
    "flowblending_routers": "api",
    "flowblending_stats": "api",
    "remove_flowblending_": "api",
    "Family": "families",
    "family_for": "families",
    "register_family": "families",
    "Plan": "plan",
    "ModelRouter": "router",
    "Schedule": "schedule",
    "Stage": "schedule",
    "SolverView": "solver",
    "RunStats": "stats",
    # The demo pipeline's VAE: diffusers loads components by top-level package name.
    "PixelShuffleVAE": "demo.pixel_vae",
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
