"""Carry a calibrated schedule to another step count, shift or scheduler through the ``sigma`` axis, and say
when that is not enough and a recalibration is advisable.

A calibration assigns a model to each solver step of one grid. What transfers is *where in the noise range*
the small model runs: :func:`sigma_schedule` puts every stage boundary halfway (in flow noise) between the
last step of one stage and the first of the next, so on the calibration grid it reproduces the calibrated
table exactly, and on any other grid each step takes the model of the noise band it lands in.

It does not transfer the error each small step makes. That grows with the step's size in noise, so
:func:`transfer` advises recalibrating when a target grid takes coarser steps inside a small stage than the
calibration grid did (fewer steps or a stronger shift there), when it is a different kind of solver
(flow vs. epsilon/v prediction: the trajectories differ, not only their grid), or when its noise range does
not cover the calibrated one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from ..core.plan import Plan
from ..core.schedule import Schedule, Stage
from ..core.step_grid import SolverView, scheduler_kind

# Small steps up to this much coarser than the calibrated ones are within what the calibration verified.
COARSER_STEP_TOLERANCE = 1.25


@dataclass(frozen=True)
class Grid:
    """The solver grid a calibration ran on: scheduler class, kind, shift and flow noise per solver step."""

    scheduler: str
    kind: str
    shift: float | None
    noise: tuple[float, ...]

    @classmethod
    def of(cls, scheduler: Any, num_inference_steps: int) -> Grid:
        view = SolverView.for_steps(scheduler, num_inference_steps)
        config = dict(getattr(scheduler, "config", {}) or {})
        shift = config.get("shift", config.get("flow_shift"))
        return cls(
            type(scheduler).__name__,
            scheduler_kind(scheduler),
            None if shift is None else float(shift),
            tuple(view.step_noise(step) for step in range(view.num_steps)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheduler": self.scheduler,
            "kind": self.kind,
            "shift": self.shift,
            "noise": list(self.noise),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Grid:
        return cls(data["scheduler"], data["kind"], data.get("shift"), tuple(data["noise"]))


def sigma_schedule(
    models: list[str], noise: tuple[float, ...] | list[float], resolution: int = 1000
) -> Schedule:
    """The ``sigma``-axis schedule that runs ``models[i]`` at a step of noise ``noise[i]`` (boundaries halfway
    between neighbouring steps, rounded to 1/``resolution`` of the noise range)."""
    if len(models) != len(noise) or not models:
        raise ValueError(f"need one model per step: got {len(models)} models for {len(noise)} steps.")
    ends: list[tuple[str, Fraction]] = []
    for i, model in enumerate(models):
        if i + 1 < len(models) and models[i + 1] != model:
            halfway = 1 - (noise[i] + noise[i + 1]) / 2
            ends.append((model, Fraction(round(halfway * resolution), resolution)))
    ends.append((models[-1], Fraction(1)))
    stages, start = [], Fraction(0)
    for model, end in ends:
        if end > start:
            stages.append(Stage(model, end - start))
            start = end
    return Schedule(tuple(stages), "sigma")


@dataclass
class Transfer:
    """A calibrated schedule carried to a target grid: the schedule, its plan there, and the advice."""

    schedule: Schedule
    plan: Plan
    recalibrate: bool
    reasons: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        verdict = (
            "recalibration advisable: " + "; ".join(self.reasons)
            if self.recalibrate
            else (
                "transfers: the target grid is no coarser inside the small stages than the calibration grid"
            )
        )
        return f"{self.schedule} (axis sigma)\n{self.plan}\n{verdict}"


def transfer(models: list[str], calibrated: Grid, scheduler: Any, num_inference_steps: int) -> Transfer:
    """Carry the calibrated per-step ``models`` (on ``calibrated``) to ``scheduler`` at
    ``num_inference_steps``."""
    schedule = sigma_schedule(models, calibrated.noise)
    target = Grid.of(scheduler, num_inference_steps)
    plan = Plan.for_scheduler(schedule, scheduler, num_inference_steps)
    reasons = []
    if target.kind != calibrated.kind:
        reasons.append(
            f"the calibration ran on a {calibrated.kind} solver ({calibrated.scheduler}), the target is "
            f"{target.kind} ({target.scheduler}): the trajectories differ, not only their grid"
        )
    calibrated_step = _largest_small_step(models, calibrated.noise)
    target_step = _largest_small_step([step.model for step in plan.steps], target.noise)
    if calibrated_step and target_step > COARSER_STEP_TOLERANCE * calibrated_step:
        reasons.append(
            f"small-model steps are {target_step / calibrated_step:.2f}x coarser in noise than when "
            f"calibrated ({target_step:.3f} vs {calibrated_step:.3f}; shift {target.shift} vs "
            f"{calibrated.shift}, {num_inference_steps} vs {len(models)} steps)"
        )
    if target.noise[0] < calibrated.noise[0] - 0.02 or target.noise[-1] > calibrated.noise[-1] + 0.02:
        reasons.append(
            f"the target noise range [{target.noise[-1]:.3f}, {target.noise[0]:.3f}] leaves the "
            f"calibrated one [{calibrated.noise[-1]:.3f}, {calibrated.noise[0]:.3f}]"
        )
    return Transfer(schedule, plan, bool(reasons), reasons)


def _largest_small_step(models: list[str], noise: tuple[float, ...]) -> float:
    """The largest noise decrement taken by a small-model step (its noise to the next step's, or to 0)."""
    nxt = list(noise[1:]) + [0.0]
    return max((noise[i] - nxt[i] for i, model in enumerate(models) if model == "small"), default=0.0)
