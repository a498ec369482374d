"""One run's state: the plan it follows, where it is, which model is active, and what it recorded.

A *run* is one walk down a step grid: one pipeline call (the router notices a new ``scheduler.timesteps``
tensor), or one pass of a k-diffusion sampler over its sigmas. The router owns at most one open
:class:`RunSession` at a time; listeners and tools read it through ``router.session`` and, once it ends,
its :class:`~flowblending_accel.core.stats.RunStats` through ``router.last_run``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .adaptive import SampleSwitches
from .plan import Plan, PlannedStep
from .stats import RunStats

MIXED = "mixed"  # a step of an adaptive run on which some samples run on each model


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
            first); ``"mixed"`` on a step of an adaptive run where samples run on both.
        switches: the per-sample state of an adaptive run (``None`` for a fixed schedule).
    """

    plan: Plan
    stats: RunStats
    scheduler: Any = None
    timesteps: Any = None
    timing: str = "off"
    last_step: int = -1
    active_model: str | None = None
    switches: SampleSwitches | None = None

    @classmethod
    def start(
        cls, plan: Plan, scheduler: Any = None, timing: str = "off", rows_per_sample: int = 1
    ) -> RunSession:
        """``rows_per_sample``: rows of one sample in a call (2 where CFG is batched), for adaptive runs."""
        stats = RunStats(
            schedule=str(plan.schedule),
            axis=plan.schedule.axis,
            scheduler=plan.view.scheduler_name,
            num_steps=len(plan.steps),
            planned_steps=plan.step_counts(),
            switch_window=plan.switch_window,
            late_start=plan.late_start if plan.switch_window is not None else None,
            first_step=plan.first_step,
        )
        timesteps = getattr(scheduler, "timesteps", None) if scheduler is not None else None
        switches = SampleSwitches(plan, rows_per_sample) if plan.switch_window is not None else None
        return cls(plan, stats, scheduler, timesteps, timing, switches=switches)

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
        """Move to solver ``step``: returns its model (``"mixed"`` where an adaptive run's samples run on
        both) and whether a new segment starts there. An adaptive run decides its switches here, at the
        step's first call."""
        if step < self.plan.first_step:
            raise RuntimeError(f"solver step {step} precedes this run's first step {self.plan.first_step}.")
        if self.switches is not None and step != self.last_step:
            self.switches.decide(step)
        model = self.model_at(step)
        starts_segment = model != self.active_model
        self.active_model, self.last_step = model, step
        return model, starts_segment

    def model_at(self, step: int) -> str:
        """The model every sample runs at ``step``, or ``"mixed"``."""
        planned = self.plan.at(step).model
        models = self.switches.models_at(step) if self.switches is not None else None
        if not models:
            return planned
        return models[0] if len(set(models)) == 1 else MIXED

    def observe(self, step: int, output: Any) -> None:
        """An adaptive run reads the output of a call (see :meth:`.adaptive.SampleSwitches.observe`)."""
        self.switches.observe(step, output)
        if self.switches.layout is not None:
            self.stats.batch_samples = self.switches.layout.samples

    def segment_span(self, model: str, step: int) -> tuple[int, int]:
        """First and last step of the segment ``model`` starts at ``step`` (an adaptive run's large stage
        ends at the latest at its ceiling; its small stage, once entered, lasts to the final large stage)."""
        if self.switches is not None and model == "small":
            return step, self.switches.late_start - 1
        _, first, last = self.plan.segment_of(step)
        return first, last

    def close(self, error: BaseException | None = None, completed: bool = False) -> RunStats:
        """Mark the run finished or aborted. It finished when no error ended it and either it reached the
        grid's last step or the pipeline says its loop completed (``completed``: Wan 2.2's high-noise expert
        never sees the last step)."""
        reached_end = self.last_step == self.plan.view.num_steps - 1
        self.stats.finished = error is None and (completed or reached_end)
        self.stats.aborted = not self.stats.finished
        if error is not None:
            self.stats.error = f"{type(error).__name__}: {error}"
        if self.switches is not None:
            self.stats.adaptive_record(self.switches.boundaries, self.switches.self_difference)
            self.switches.clear()
        return self.stats
