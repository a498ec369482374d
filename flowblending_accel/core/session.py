"""One run's state: the plan it follows, where it is, which model is active, and what it recorded.

A *run* is one walk down a step grid: one pipeline call (the router notices a new ``scheduler.timesteps``
tensor), or one pass of a k-diffusion sampler over its sigmas. The router owns at most one open
:class:`RunSession` at a time; listeners and tools read it through ``router.session`` and, once it ends,
its :class:`~flowblending_accel.core.stats.RunStats` through ``router.last_run``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .plan import Plan, PlannedStep
from .stats import RunStats


@dataclass
class RunSession:
    """The state of one run.

    Attributes:
        plan: the model table of this run (from its first step to the grid's end).
        stats: every call recorded so far (the same object ``router.last_run`` returns).
        scheduler: the scheduler driving the run (``None`` on the k-diffusion path).
        timesteps: that scheduler's ``timesteps`` tensor when the run started; a new tensor is a new run.
        timing: how calls are timed in this run: ``"host"``, ``"cuda"`` or ``"off"``.
        last_step: the solver step of the latest call (``-1`` before the first).
        active_model: ``"large"`` or ``"small"``: the model of the current segment (``None`` before the
            first).
    """

    plan: Plan
    stats: RunStats
    scheduler: Any = None
    timesteps: Any = None
    timing: str = "off"
    last_step: int = -1
    active_model: str | None = None

    @classmethod
    def start(cls, plan: Plan, scheduler: Any = None, timing: str = "off") -> RunSession:
        stats = RunStats(
            schedule=str(plan.schedule),
            axis=plan.schedule.axis,
            scheduler=plan.view.scheduler_name,
            num_steps=len(plan.steps),
            planned_steps=plan.step_counts(),
        )
        timesteps = getattr(scheduler, "timesteps", None) if scheduler is not None else None
        return cls(plan, stats, scheduler, timesteps, timing)

    def is_current_for(self, scheduler: Any) -> bool:
        """Whether ``scheduler`` is still on this run's grid (``set_timesteps`` makes a new tensor)."""
        return self.scheduler is scheduler and self.timesteps is scheduler.timesteps

    @property
    def planned(self) -> PlannedStep | None:
        """The planned step of the latest call (``None`` before the first call)."""
        return self.plan.at(self.last_step) if self.last_step >= self.plan.first_step else None

    @property
    def stage(self) -> int | None:
        planned = self.planned
        return planned.stage if planned is not None else None

    def enter(self, step: int) -> tuple[str, bool]:
        """Move to solver ``step``: returns its model and whether a new segment starts there."""
        if step < self.plan.first_step:
            raise RuntimeError(f"solver step {step} precedes this run's first step {self.plan.first_step}.")
        model = self.plan.at(step).model
        starts_segment = model != self.active_model
        self.active_model, self.last_step = model, step
        return model, starts_segment

    def close(self, error: BaseException | None = None, completed: bool = False) -> RunStats:
        """Mark the run finished or aborted. It finished when no error ended it and either it reached the
        grid's last step or the pipeline says its loop completed (``completed``: Wan 2.2's high-noise expert
        never sees the last step)."""
        reached_end = self.last_step == self.plan.view.num_steps - 1
        self.stats.finished = error is None and (completed or reached_end)
        self.stats.aborted = not self.stats.finished
        if error is not None:
            self.stats.error = f"{type(error).__name__}: {error}"
        return self.stats
