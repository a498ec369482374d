"""A schedule laid onto a scheduler's step grid: the per-solver-step model table."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .schedule import Schedule, round_half_up
from .step_grid import SolverView

# The self-difference of a step compares two large-model outputs, so a run's first switch can come at its
# third step at the earliest.
OUTPUTS_BEFORE_A_SWITCH = 2


@dataclass(frozen=True)
class PlannedStep:
    step: int
    timestep: float
    sigma: float
    noise: float
    stage: int
    model: str


@dataclass(frozen=True)
class Plan:
    """Which model runs each solver step of one run, from ``first_step`` (img2img starts later) to the end.

    For an adaptive schedule ``steps`` hold its latest layout (every sample switching at the ceiling) and
    ``switch_window`` is ``(first, ceiling)``: a sample may enter the small stage at any step from ``first``
    up to ``ceiling``, where every sample still on the large model switches (:mod:`.adaptive`).
    """

    schedule: Schedule
    view: SolverView
    steps: tuple[PlannedStep, ...]
    first_step: int = 0
    switch_window: tuple[int, int] | None = None

    @classmethod
    def build(cls, schedule: Schedule, view: SolverView, first_step: int = 0) -> Plan:
        run_steps = list(range(first_step, view.num_steps))
        if not run_steps:
            raise ValueError(
                f"first_step={first_step} is past the scheduler's {view.num_steps} solver steps."
            )
        if schedule.axis == "step":
            stages = schedule.stages_for_step_count(len(run_steps))
        else:
            stages = [schedule.stage_at_progress(1.0 - view.step_noise(step)) for step in run_steps]
        planned = tuple(
            PlannedStep(
                step=step,
                timestep=view.step_timestep(step),
                sigma=view.step_sigma(step),
                noise=view.step_noise(step),
                stage=stage,
                model=schedule.stages[stage].model,
            )
            for step, stage in zip(run_steps, stages, strict=True)
        )
        window = _switch_window(schedule, view, planned) if schedule.adaptive is not None else None
        return cls(schedule, view, planned, first_step, window)

    @classmethod
    def for_scheduler(
        cls, schedule: Schedule, scheduler: Any, num_inference_steps: int, **set_timesteps_kwargs: Any
    ) -> Plan:
        """The table ``schedule`` will follow on ``scheduler`` at ``num_inference_steps`` (a copy is used)."""
        return cls.build(
            schedule, SolverView.for_steps(scheduler, num_inference_steps, **set_timesteps_kwargs)
        )

    # ------------------------------------------------------------------------------------------ queries
    def at(self, step: int) -> PlannedStep:
        """The planned step ``step`` (a solver step index of the whole grid, not of this run)."""
        return self.steps[step - self.first_step]

    @property
    def late_start(self) -> int:
        """The first step of the final large stage (the grid's end when there is none)."""
        late = [p.step for p in self.steps if p.stage == 2]
        return late[0] if late else self.view.num_steps

    def segment_of(self, step: int) -> tuple[str, int, int]:
        """The ``(model, first_step, last_step)`` segment holding ``step``."""
        return next(segment for segment in self.segments() if segment[1] <= step <= segment[2])

    def step_counts(self) -> dict[str, int]:
        """Solver steps per model (every model of the schedule is listed, possibly with 0)."""
        counts = dict.fromkeys(sorted(self.schedule.models), 0)
        for planned in self.steps:
            counts[planned.model] += 1
        return counts

    def stage_step_counts(self) -> list[int]:
        counts = [0] * len(self.schedule.stages)
        for planned in self.steps:
            counts[planned.stage] += 1
        return counts

    def advice(self) -> list[str]:
        """Stages that get no solver step on this grid (the schedule's own advice: ``schedule.advice()``)."""
        found = []
        if self.switch_window is not None and self.switch_window[0] == self.switch_window[1]:
            found.append(
                f"the switch window of {self.schedule} holds no step at {len(self.steps)} steps (a switch "
                f"needs {OUTPUTS_BEFORE_A_SWITCH} large outputs first): every sample switches at step "
                f"{self.switch_window[1]}, as a fixed schedule would; widen the window or use more steps."
            )
        counts = self.stage_step_counts()
        for index, (stage, count) in enumerate(zip(self.schedule.stages, counts, strict=True)):
            if count == 0:
                found.append(
                    f"stage {index + 1} ({stage}) of {self.schedule} gets no solver step at "
                    f"{len(self.steps)} steps: it is skipped; use more steps or a wider stage."
                )
        return found

    def segments(self) -> list[tuple[str, int, int]]:
        """Maximal runs of one model as ``(model, first_step, last_step)``: the switches happen between
        them."""
        segments: list[tuple[str, int, int]] = []
        for planned in self.steps:
            if segments and segments[-1][0] == planned.model:
                segments[-1] = (planned.model, segments[-1][1], planned.step)
            else:
                segments.append((planned.model, planned.step, planned.step))
        return segments

    def flop_share(self, flops_per_step: dict[str, float]) -> dict[str, float]:
        """Share of the run's FLOPs per model, given each model's FLOPs per solver step."""
        missing = self.schedule.models - set(flops_per_step)
        if missing:
            raise ValueError(f"flops_per_step lacks {sorted(missing)}; give FLOPs for every scheduled model.")
        spent = {model: n * flops_per_step[model] for model, n in self.step_counts().items()}
        total = sum(spent.values())
        return {model: value / total if total else 0.0 for model, value in spent.items()}

    def flop_ratio(self, flops_per_step: dict[str, float]) -> float:
        """This plan's FLOPs divided by the same steps all on the large model (1.0 = no saving); for an
        adaptive schedule, its latest layout's (the most a sample can cost)."""
        counts = self.step_counts()
        spent = sum(n * flops_per_step[model] for model, n in counts.items())
        return spent / (sum(counts.values()) * flops_per_step["large"])

    # ----------------------------------------------------------------------------------------- display
    def table(self, flops_per_step: dict[str, float] | None = None) -> str:
        """A fixed-width step table for humans, with per-model totals (and FLOP shares when given)."""
        header = f"{'step':>4}  {'timestep':>9}  {'sigma':>9}  {'noise':>6}  {'stage':>5}  model"
        lines = [
            f"schedule {self.schedule} (axis={self.schedule.axis}) on {self.view.scheduler_name}, "
            f"{len(self.steps)} solver steps ({len(self.view.timesteps)} loop iterations, "
            f"order {self.view.order})",
            header,
            "-" * len(header),
        ]
        first, ceiling = self.switch_window or (0, 0)
        for p in self.steps:
            stage = f"{p.stage + 1}:{self.schedule.stages[p.stage].letter}"
            model = f"{p.model} (or small from here)" if first <= p.step < ceiling else p.model
            lines.append(
                f"{p.step:>4}  {p.timestep:>9.3f}  {p.sigma:>9.4f}  {p.noise:>6.4f}  {stage:>5}  {model}"
            )
        counts = ", ".join(f"{model} {n}" for model, n in self.step_counts().items())
        lines.append(f"steps per model: {counts}; stage sizes: {self.stage_step_counts()}")
        if self.switch_window is not None:
            lines.append(
                f"adaptive: each sample enters the small stage at the first step from {first} on whose "
                f"previous step's self-difference is below {self.schedule.adaptive.threshold:g}, at step "
                f"{ceiling} at the latest; the table is that latest layout"
            )
        if flops_per_step:
            share = ", ".join(f"{m} {v:.1%}" for m, v in self.flop_share(flops_per_step).items())
            lines.append(f"FLOP share: {share}; FLOPs vs large-only: {self.flop_ratio(flops_per_step):.3f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule.to_dict(),
            "scheduler": self.view.scheduler_name,
            "order": self.view.order,
            "first_step": self.first_step,
            "steps": [asdict(p) for p in self.steps],
            "step_counts": self.step_counts(),
            "switch_window": list(self.switch_window) if self.switch_window else None,
        }


def _switch_window(schedule: Schedule, view: SolverView, planned: tuple[PlannedStep, ...]) -> tuple[int, int]:
    """``(first, ceiling)`` of an adaptive schedule on these steps: the ceiling is where its latest layout's
    small stage starts; the first is the floor's step, but never before the run's third step."""
    end = planned[-1].step + 1
    ceiling = next((p.step for p in planned if p.stage >= 1), end)
    floor = schedule.adaptive.floor
    if schedule.axis == "step":
        floor_step = planned[0].step + round_half_up(floor * len(planned))
    else:
        floor_step = next((p.step for p in planned if 1.0 - p.noise >= float(floor) - 1e-9), end)
    first = max(floor_step, planned[0].step + OUTPUTS_BEFORE_A_SWITCH)
    return min(first, ceiling), ceiling
