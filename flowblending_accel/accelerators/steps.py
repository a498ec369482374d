"""Step reduction: swap the pipeline's scheduler for a faster solver (DPM++, UniPC, Euler, Heun) at N steps,
keeping the training settings of the scheduler it replaces and a flow shift right for Wan / LTX."""

from __future__ import annotations

from typing import Any

from ..schedulers import FLOW_SCHEDULERS, SCHEDULER_NAMES, make_scheduler
from .base import Accelerator, Pair


class StepReduction(Accelerator):
    kind = "steps"
    stage = "scheduler"

    def __init__(self, scheduler: str = "dpm++", steps: int = 25, shift: float | None = None) -> None:
        if scheduler not in SCHEDULER_NAMES:
            raise ValueError(f"steps: scheduler {scheduler!r} is unknown; choose one of {', '.join(SCHEDULER_NAMES)}.")
        if steps < 1:
            raise ValueError(f"steps: steps={steps} must be at least 1.")
        self.scheduler, self.steps, self.shift = scheduler, steps, shift
        self._previous = None

    def check(self, pair: Pair, others: list[Accelerator]) -> None:
        current = pair.pipe.scheduler
        flow = type(current).__name__.startswith("FlowMatch") or current.config.get("use_flow_sigmas")
        if bool(flow) != (self.scheduler in FLOW_SCHEDULERS):
            kind = "flow-matching" if flow else "diffusion (epsilon / v)"
            raise ValueError(f"steps: {self.scheduler!r} does not fit this pipeline's {kind} scheduler "
                             f"{type(current).__name__}; pick a {kind} solver.")

    def apply(self, pair: Pair) -> None:
        self._previous = pair.pipe.scheduler
        pair.pipe.scheduler = make_scheduler(self.scheduler, self._shift(self._previous), from_config=self._previous.config)

    def remove(self, pair: Pair) -> None:
        if self._previous is not None:
            pair.pipe.scheduler, self._previous = self._previous, None

    def _shift(self, previous: Any) -> float:
        if self.shift is not None:
            return self.shift
        config = previous.config
        return float(config.get("flow_shift") or config.get("shift") or 1.0)

    def call_kwargs(self) -> dict[str, Any]:
        return {"num_inference_steps": self.steps}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "scheduler": self.scheduler, "steps": self.steps, "shift": self.shift}
