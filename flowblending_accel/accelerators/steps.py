"""Step reduction: swap the pipeline's scheduler for a faster solver (DPM++, UniPC, Euler, Heun) at N steps,
keeping the training settings of the scheduler it replaces and a flow shift right for Wan / LTX."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.named_schedulers import FLOW_SCHEDULERS, SCHEDULER_NAMES, make_scheduler, takes_sigmas
from .registry import AcceleratorConfig, register_accelerator, spec_value
from .runtime import Accelerator, RoutedModels


@register_accelerator
@dataclass(frozen=True)
class StepReduction(AcceleratorConfig):
    """Swap the pipeline's scheduler for ``solver`` at ``steps`` solver steps (flow settings kept)."""

    solver: str = "dpm++"
    steps: int = 25
    shift: float | None = None

    names = SCHEDULER_NAMES
    kind = "scheduler"
    spec_help = "dpm++:25 | unipc:20 | euler:30 | heun:25 (step reduction)"

    def create(self) -> StepReductionAccelerator:
        return StepReductionAccelerator(self)

    def __post_init__(self) -> None:
        if self.solver not in SCHEDULER_NAMES:
            raise ValueError(
                f"StepReduction.solver={self.solver!r} is unknown; "
                f"choose one of {', '.join(SCHEDULER_NAMES)}."
            )
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"StepReduction.steps={self.steps!r} must be a whole number of at least 1.")

    @property
    def name(self) -> str:
        return self.solver

    @classmethod
    def from_spec(cls, name: str, value: str) -> StepReduction:
        return cls(name, spec_value(name, value, int, "a whole number of steps") if value else 25)

    @property
    def spec(self) -> str:
        return f"{self.solver}:{self.steps}"

    def check_family(self, family, denoisers, solver_kind=None) -> None:
        kind = family.solver_kind or solver_kind
        if kind is not None and (kind == "flow") != (self.solver in FLOW_SCHEDULERS):
            named = "flow-matching" if kind == "flow" else "diffusion (epsilon / v)"
            fitting = [name for name in SCHEDULER_NAMES if (name in FLOW_SCHEDULERS) == (kind == "flow")]
            raise ValueError(
                f"{self.spec}: {self.solver!r} does not fit the {family.name} pipeline's {named} "
                f"checkpoints; pick one of {', '.join(fitting)}."
            )
        if family.passes_sigmas and not takes_sigmas(self.solver):
            raise ValueError(
                f"{self.spec}: the {family.name} pipeline hands the scheduler its own sigma grid, which "
                f"{self.solver!r} does not take; use euler or unipc."
            )


class StepReductionAccelerator(Accelerator):
    _previous: Any = None
    _runs = 0
    _steps = 0  # solver steps the runs made (the router's plan), over all runs

    def apply(self, target: RoutedModels) -> None:
        self._previous = target.pipe.scheduler
        target.pipe.scheduler = make_scheduler(
            self.config.solver, self._shift(self._previous), from_config=self._previous.config
        )

    def remove(self, target: RoutedModels) -> None:
        if self._previous is not None:
            target.pipe.scheduler, self._previous = self._previous, None

    def _shift(self, previous: Any) -> float:
        if self.config.shift is not None:
            return self.config.shift
        config = previous.config
        return float(config.get("flow_shift") or config.get("shift") or 1.0)

    def call_kwargs(self) -> dict[str, Any]:
        return {"num_inference_steps": self.config.steps}

    def on_run_start(self, router, session) -> None:
        self._runs += 1
        self._steps += len(session.plan.steps)

    def counters(self) -> dict[str, Any]:
        return {
            "solver": self.config.solver,
            "runs": self._runs,
            "steps_per_run": self._steps / self._runs if self._runs else self.config.steps,
            "scheduler": type(self._previous).__name__ if self._previous is not None else None,
        }
