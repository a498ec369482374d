"""flowblending-accel: FlowBlending (large-small-large stage-aware sampling) for diffusers pipelines."""

from .api import (
    FlowBlendingConfig,
    apply_flowblending_,
    flowblending_routers,
    flowblending_stats,
    remove_flowblending_,
)
from .families import Family, family_for, register_family
from .plan import Plan
from .router import ModelRouter
from .schedule import Schedule, Stage
from .solver import SolverView
from .stats import RunStats

__version__ = "0.1.0"

__all__ = [
    "Family",
    "FlowBlendingConfig",
    "ModelRouter",
    "Plan",
    "RunStats",
    "Schedule",
    "SolverView",
    "Stage",
    "apply_flowblending_",
    "family_for",
    "flowblending_routers",
    "flowblending_stats",
    "register_family",
    "remove_flowblending_",
]
