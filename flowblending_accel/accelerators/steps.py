"""Step reduction: swap the pipeline's scheduler for a faster solver (DPM++, UniPC, Euler, Heun) at N steps,
keeping the training settings of the scheduler it replaces and a flow shift right for Wan / LTX."""

from __future__ import annotations

from typing import Any

from ..core.named_schedulers import make_scheduler
from .runtime import Accelerator, RoutedModels


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
