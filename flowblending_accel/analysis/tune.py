"""Tune the whole stack jointly: stage boundaries, solver step count, feature-cache threshold and (for a
distilled small model) guidance on the small stage, under a quality tolerance or a FLOP budget.

Quality is always against the large-only, full-step, uncached output of the same noise. A configuration is
a :class:`Point`; the :class:`Evaluator` generates it on the fit calls and scores it. The search costs far
less than the grid it replaces:

* **proposals, not enumeration**: at each step count, a divergence curve along the large-only trajectory
  proposes the placement of ``k`` small steps (any number of small stages, see
  :func:`.calibrate.best_placements`), and a bisection over ``k`` finds the most small steps that pass; a
  cache threshold is raised only on the points that passed, until one fails;
* **prefix replay**: uncached configurations that share the first steps of their trajectory reuse those
  denoiser outputs (:class:`.replay.PrefixReplay`);
* **early rejection**: every point is scored on the first fit call; one clearly below what it must reach (by
  more than twice the standard error of the sample scores) is rejected before the rest of the fit set;
* **a call budget**: the search stops when it has spent ``max_calls`` pipeline calls, and says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ..accelerators import (
    FirstBlockCache,
    FlowBlendingConfig,
    RoutedModels,
    StepReduction,
    applied_stack,
    as_configs,
    flowblending,
    parse_accelerator,
)
from ..core.api import add_flowblending_listener, flowblending_stats
from ..core.schedule import Schedule
from ..metrics.flops import flops_per_call, run_flops
from ..metrics.intervals import mean_interval
from ..metrics.scorers import Scorer, as_video
from .adaptive_fit import Settling, record_settling
from .calibrate import best_placements
from .divergence import divergence_curve, replay
from .replay import PrefixReplay
from .scores import Scores, probing


@dataclass(frozen=True)
class Point:
    """One configuration: the model of every solver step, the solver (``None``: the target's own, at its
    own step count), a FirstBlockCache threshold (``None``: no cache), and guidance on the small stage. An
    adaptive point (``adaptive``: its schedule, ``"L20:60~0.03-S-L20"``) has its latest layout as
    ``models``: each sample switches at its own step up to it."""

    models: tuple[str, ...]
    solver: str | None = None
    cache: float | None = None
    small_guidance: str = "on"
    adaptive: str | None = None

    @classmethod
    def switching(cls, schedule: Schedule, steps: int, solver: str | None = None) -> Point:
        """The adaptive ``schedule`` at ``steps`` steps."""
        return cls(tuple(schedule.models_for_step_count(steps)), solver, adaptive=str(schedule))

    @property
    def steps(self) -> int:
        return len(self.models)

    @property
    def schedule(self) -> str:
        return self.adaptive or str(Schedule.from_models(list(self.models)))

    @property
    def stack(self) -> list[str]:
        members = [f"{self.solver}:{self.steps}"] if self.solver else []
        return members + ([f"fbc:{self.cache:g}"] if self.cache else [])

    @property
    def small_steps(self) -> int:
        return self.models.count("small")

    def label(self) -> str:
        parts = [self.schedule, *self.stack]
        return " ".join(parts) + (" small-guidance-off" if self.small_guidance == "off" else "")

    @classmethod
    def parse(cls, text: str, full_steps: int) -> Point:
        """A stack as ``bench`` takes it, ``"L40-S40-L20 dpm++:10 fbc:0.2"``: a schedule, then at most one
        step-reduction solver and one FirstBlockCache (the knobs a point has)."""
        schedule, *members = text.split()
        solver, steps, cache = None, full_steps, None
        parsed = Schedule.parse(schedule)
        for config in map(parse_accelerator, members):
            if isinstance(config, StepReduction) and solver is None:
                solver, steps = config.solver, config.steps
            elif isinstance(config, FirstBlockCache) and cache is None:
                cache = config.threshold
            else:
                raise ValueError(
                    f"{text!r}: {config.spec} is not a knob tune compares; give a schedule, at most one "
                    "step-reduction solver (dpm++:10) and one FirstBlockCache (fbc:0.2)."
                )
        if parsed.adaptive is not None:
            if cache is not None:
                raise ValueError(f"{text!r}: a feature cache cannot run under an adaptive schedule.")
            return cls.switching(parsed, steps, solver)
        return cls(tuple(parsed.models_for_step_count(steps)), solver, cache)


@dataclass
class Evaluation:
    point: Point
    flop_ratio: float
    scores: Scores | None = None  # on the whole fit set; None when rejected early
    screen: Scores | None = None
    rejected: bool = False
    calls: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.point.label(),
            "schedule": self.point.schedule,
            "stack": self.point.stack,
            "steps": self.point.steps,
            "small_steps": self.point.small_steps,
            "small_guidance": self.point.small_guidance,
            "adaptive": self.point.adaptive is not None,
            "flop_ratio": self.flop_ratio,
            "scores": self.scores,
            "screen": self.screen,
            "rejected_early": self.rejected,
        }


class BudgetSpent(Exception):
    """The search's call budget is spent."""


@contextmanager
def solver_at(target, solver: str | None, steps: int) -> Iterator[dict]:
    """The target's pipeline with ``solver`` swapped in (none: its own scheduler); yields the call arguments
    that make it run ``steps`` steps."""
    if not solver:
        yield {"num_inference_steps": steps}
        return
    accelerator = parse_accelerator(f"{solver}:{steps}").create()
    stack_target = RoutedModels.of(target.pipe, target.small)
    accelerator.apply(stack_target)
    try:
        yield accelerator.call_kwargs()
    finally:
        accelerator.remove(stack_target)


class Evaluator:
    """Generates points on the fit calls and scores them against the large-only, full-step output."""

    def __init__(
        self, target, fit_calls: list[dict], scorers: list[Scorer], full_steps: int, **options
    ) -> None:
        self.target, self.calls, self.scorers, self.full_steps = target, fit_calls, scorers, full_steps
        self.max_calls, self.progress = options.get("max_calls"), options.get("progress")
        self.replay, self.pipeline_calls = PrefixReplay(), 0
        self.evaluations: dict[Point, Evaluation] = {}
        # Every use of a call goes through replay(): a generator advances when it is used, and the fit calls'
        # noise must be the same for every point and for the reference.
        self.per_call = flops_per_call(target.pipe, target.small, replay(fit_calls[0]))
        full = Point(("large",) * full_steps)
        self.reference = [self._run(full, kwargs, index) for index, kwargs in enumerate(fit_calls)]
        self.reference_large_calls = self._last_calls.get("large", 0)

    def _run(self, point: Point, kwargs: dict, index: int) -> torch.Tensor:
        if self.max_calls is not None and self.pipeline_calls >= self.max_calls:
            raise BudgetSpent
        target = self.target
        options: dict[str, Any] = {"timing": "off", "small_guidance": point.small_guidance}
        if point.small_guidance == "off":
            options["small_distilled"] = True
        with (
            probing(),
            flowblending(
                target.pipe,
                target.small,
                FlowBlendingConfig(point.schedule, accelerators=point.stack, **options),
            ),
            torch.inference_mode(),
        ):
            stack = applied_stack(target.pipe)
            if point.cache is None:  # a cache's state depends on every call: no replay under one
                add_flowblending_listener(target.pipe, self.replay)
            self.replay.context = (index, point.solver, point.steps, point.small_guidance)
            call = {
                **stack.without_owned(replay(kwargs)),
                **({} if point.solver else {"num_inference_steps": point.steps}),
            }
            video = as_video(target.output(target.pipe(**call)))
            self._last_calls = flowblending_stats(target.pipe).batch_calls_per_model
        self.pipeline_calls += 1
        if self.progress is not None:
            self.progress(1)
        return video

    def _flop_ratio(self, point: Point, calls: dict[str, int]) -> float:
        reference = self.reference_large_calls * self.per_call["large"]
        if point.cache is None:  # exact: a call's work does not depend on its step
            return sum(n * self.per_call[m] for m, n in calls.items()) / reference
        # A cache skips work per call: count it on the first fit call.
        kwargs = replay(self.calls[0])
        if point.solver:
            kwargs.pop("num_inference_steps", None)  # the step reduction owns it
        else:
            kwargs["num_inference_steps"] = point.steps
        with probing():
            schedule, stack = Schedule.parse(point.schedule), as_configs(point.stack)
            counted, _ = run_flops(self.target.pipe, self.target.small, schedule, kwargs, stack)
        return sum(counted.values()) / reference

    def _sample_scores(self, videos: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs, reference = torch.cat(videos), torch.cat(self.reference[: len(videos)])
        return {s.name: s.per_sample(outputs, reference).double() for s in self.scorers}

    def evaluate(self, point: Point, must_reach: Scores | None = None) -> Evaluation:
        """Score ``point``: its first fit call first, then (unless clearly below ``must_reach``) the rest."""
        if point in self.evaluations:
            return self.evaluations[point]
        first = [self._run(point, self.calls[0], 0)]
        counted = [dict(self._last_calls)]
        evaluation = Evaluation(point, self._flop_ratio(point, counted[0]), calls=counted[0])
        samples = self._sample_scores(first)
        evaluation.screen = {name: float(values.mean()) for name, values in samples.items()}
        if must_reach is not None and _clearly_below(samples, must_reach):
            evaluation.rejected = True
        else:
            rest = []
            for index, kwargs in enumerate(self.calls[1:], 1):
                rest.append(self._run(point, kwargs, index))
                counted.append(dict(self._last_calls))
            samples = self._sample_scores(first + rest)
            evaluation.scores = {name: float(values.mean()) for name, values in samples.items()}
            evaluation.flop_ratio = self._mean_flop_ratio(point, counted)
        self.evaluations[point] = evaluation
        return evaluation

    def _mean_flop_ratio(self, point: Point, counted: list[dict[str, float]]) -> float:
        """Over every call made: an adaptive point's samples switch at their own steps, so its calls differ
        (a fixed point's do not: its first call's figure is every call's)."""
        if point.adaptive is None:
            return self._flop_ratio(point, counted[0])
        return sum(self._flop_ratio(point, calls) for calls in counted) / len(counted)

    def held_out(self, point: Point, prompts: list) -> dict[str, Any]:
        """Every call (no early rejection): scores with 95 % intervals against the large-only, full-step
        output, the target's own figures (e.g. the embedded classifier's accuracies) and the FLOP ratio."""
        videos, counted = [], []
        for index, kwargs in enumerate(self.calls):
            videos.append(self._run(point, kwargs, index))
            counted.append(dict(self._last_calls))
        outputs, reference = torch.cat(videos), torch.cat(self.reference)
        row: dict[str, Any] = {
            "label": point.label(),
            "schedule": point.schedule,
            "stack": point.stack,
            "flop_ratio": self._mean_flop_ratio(point, counted),
            "samples": len(outputs),
            "scores": {},
            "extras": {},
        }
        for scorer in self.scorers:
            if point != Point(("large",) * self.full_steps):
                row["scores"][scorer.name] = mean_interval(scorer.per_sample(outputs, reference))
            if scorer.extras is not None:
                row["extras"].update(scorer.extras(outputs, prompts))
        return row

    def settling(self, window: Schedule, steps: int, solver: str | None) -> Settling:
        """The self-differences ``window`` reads on the fit calls at ``steps`` steps (one pass: every
        threshold's boundaries and FLOPs follow from it, see :mod:`.adaptive_fit`)."""
        if self.max_calls is not None and self.pipeline_calls + len(self.calls) > self.max_calls:
            raise BudgetSpent
        with solver_at(self.target, solver, steps) as step_arguments:
            calls = [{**kwargs, **step_arguments} for kwargs in self.calls]
            settling, _ = record_settling(
                self.target.pipe, self.target.small, calls, window, self.target.output, self.progress
            )
        self.pipeline_calls += len(calls)
        return settling

    def placements(self, steps: int, solver: str | None, guidance: float) -> dict[int, list[tuple[str, ...]]]:
        """Per count ``k`` of small steps, the placements every divergence measure proposes along the
        large-only trajectory at ``steps`` steps (one curve: about two pipeline calls' work)."""
        with solver_at(self.target, solver, steps) as step_arguments, probing():
            calls = [{**self.calls[0], **step_arguments}]
            curve = divergence_curve(
                self.target.pipe, self.target.small, calls, guidance, output_field=self.target.output_field
            )
        self.pipeline_calls += 1
        proposals: dict[int, list[tuple[str, ...]]] = {}
        for measure in curve.values:
            for k, (_, models) in best_placements(curve.mean(measure)).items():
                if tuple(models) not in proposals.setdefault(k, []):
                    proposals[k].append(tuple(models))
        return proposals


def _clearly_below(samples: dict[str, torch.Tensor], must_reach: Scores) -> bool:
    for name, minimum in must_reach.items():
        values = samples[name]
        error = float(values.std()) / math.sqrt(len(values)) if len(values) > 1 else 0.0
        if float(values.mean()) + 2 * error < minimum:
            return True
    return False
