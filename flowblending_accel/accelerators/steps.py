"""Step reduction: swap the pipeline's scheduler for a faster solver (DPM++, UniPC, Euler, Heun) at N steps,
keeping the training settings of the scheduler it replaces and a flow shift right for Wan / LTX."""

from __future__ import annotations

import inspect
from typing import Any

from ..schedulers import FLOW_SCHEDULERS, make_scheduler
from ..solver import scheduler_kind
from .runtime import Accelerator, StackTarget


class StepReductionAccelerator(Accelerator):
    _previous: Any = None

    def check(self, target: StackTarget, others: list[Accelerator]) -> None:
        current = target.pipe.scheduler
        flow = (target.family.solver_kind or scheduler_kind(current)) == "flow"
        if flow != (self.config.solver in FLOW_SCHEDULERS):
            kind = "flow-matching" if flow else "diffusion (epsilon / v)"
            raise ValueError(
                f"steps: {self.config.solver!r} does not fit this pipeline's {kind} scheduler "
                f"{type(current).__name__}; pick a {kind} solver."
            )
        if target.family.passes_sigmas:
            solver = make_scheduler(self.config.solver)
            if "sigmas" not in inspect.signature(solver.set_timesteps).parameters:
                raise ValueError(
                    f"steps: the {target.family.name} pipeline hands the scheduler its own sigma grid, which "
                    f"{self.config.solver!r} ({type(solver).__name__}) does not take; use euler or unipc."
                )

    def apply(self, target: StackTarget) -> None:
        self._previous = target.pipe.scheduler
        target.pipe.scheduler = make_scheduler(
            self.config.solver, self._shift(self._previous), from_config=self._previous.config
        )

    def remove(self, target: StackTarget) -> None:
        if self._previous is not None:
            target.pipe.scheduler, self._previous = self._previous, None

    def _shift(self, previous: Any) -> float:
        if self.config.shift is not None:
            return self.config.shift
        config = previous.config
        return float(config.get("flow_shift") or config.get("shift") or 1.0)

    def call_kwargs(self) -> dict[str, Any]:
        return {"num_inference_steps": self.config.steps}
