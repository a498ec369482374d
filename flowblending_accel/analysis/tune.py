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
from .call_runner import CallRunner, Job, identities_of
from .divergence import divergence_curve, replay
from .evaluate import call_extras, call_prompts, extras_row
from .replay import PrefixReplay
from .scores import SampleQuality, Scores, probing


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

    def as_what(self) -> dict[str, Any]:
        """The point as a journal line says it (letters for the models of the steps)."""
        letters = "".join("S" if model == "small" else "L" for model in self.models)
        what = {
            "models": letters,
            "solver": self.solver,
            "cache": self.cache,
            "guidance": self.small_guidance,
        }
        return what | ({"adaptive": self.adaptive} if self.adaptive is not None else {})

    @classmethod
    def from_what(cls, what: dict[str, Any]) -> Point:
        models = tuple("small" if letter == "S" else "large" for letter in what["models"])
        return cls(models, what["solver"], what["cache"], what["guidance"], what.get("adaptive"))

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
    """Generates points on the fit calls and scores them against the large-only, full-step output. Every
    call is a job of ``runner`` (none: one in memory, advancing ``progress``): a point's first call (its
    screen) and its other calls spread over the ranks, and each call's scores, calls per model and
    prefix-replay counts are journalled with it."""

    def __init__(
        self, target, fit_calls: list[dict], scorers: list[Scorer], full_steps: int, runner=None, **options
    ) -> None:
        self.target, self.calls, self.scorers, self.full_steps = target, fit_calls, scorers, full_steps
        self.quality = SampleQuality(scorers)
        self.runner = runner if runner is not None else CallRunner(progress=options.get("progress"))
        self.max_calls = options.get("max_calls")
        self.replay = PrefixReplay()
        self.denoiser_calls = {"computed": 0, "replayed": 0}  # over every job's result, made or journalled
        self.evaluations: dict[Point, Evaluation] = {}
        self.identities = identities_of(fit_calls)
        # Every use of a call goes through replay(): a generator advances when it is used, and the fit calls'
        # noise must be the same for every point and for the reference.
        self.per_call = flops_per_call(target.pipe, target.small, replay(fit_calls[0]))
        self.full = Point(("large",) * full_steps)
        self.references = self._jobs(self.full, "reference", range(len(fit_calls)))
        self.reference_large_calls = self._run(self.references)[-1]["calls"].get("large", 0)

    @property
    def pipeline_calls(self) -> int:
        """The pipeline calls the run has used (made or journalled, on every rank)."""
        return self.runner.used

    def _jobs(self, point: Point, role: str, indexes, extras: bool = False) -> list[Job]:
        what = {"pass": "tune", "role": role, "point": point.as_what(), "scorers": self.quality.key}
        what.update({"extras": True} if extras else {})
        return [Job(what, index, self.identities[index], 0 if role == "flops" else 1) for index in indexes]

    def _run(self, jobs: list[Job]) -> list[dict[str, Any]]:
        if self.max_calls is not None and self.pipeline_calls + sum(j.calls for j in jobs) > self.max_calls:
            raise BudgetSpent
        results = self.runner.run(jobs, self._make, self._routed)
        for result in results:
            for kind in self.denoiser_calls:
                self.denoiser_calls[kind] += result["replay"][kind]
        return results

    @contextmanager
    def _routed(self, job: Job) -> Iterator[None]:
        point, target = Point.from_what(job.what["point"]), self.target
        options: dict[str, Any] = {"timing": "off", "small_guidance": point.small_guidance}
        if point.small_guidance == "off":
            options["small_distilled"] = True
        config = FlowBlendingConfig(point.schedule, accelerators=point.stack, **options)
        with probing(), flowblending(target.pipe, target.small, config), torch.inference_mode():
            if point.cache is None:  # a cache's state depends on every call: no replay under one
                add_flowblending_listener(target.pipe, self.replay)
            yield

    def _make(self, job: Job) -> dict[str, Any]:
        point, target = Point.from_what(job.what["point"]), self.target
        before = self.replay.computed, self.replay.replayed
        self.replay.context = (job.index, point.solver, point.steps, point.small_guidance)
        call = {
            **applied_stack(target.pipe).without_owned(replay(self.calls[job.index])),
            **({} if point.solver else {"num_inference_steps": point.steps}),
        }
        video = as_video(target.output(target.pipe(**call)))
        replayed = {
            "computed": self.replay.computed - before[0],
            "replayed": self.replay.replayed - before[1],
        }
        # In whole batches: what FLOPs follow when an adaptive schedule splits a call by sample.
        calls = dict(flowblending_stats(target.pipe).batch_calls_per_model)
        result: dict[str, Any] = {"calls": calls, "samples": len(video), "replay": replayed}
        if point.cache is None:  # exact: a call's work does not depend on its step (a cache's: its own job)
            result["flops"] = sum(count * self.per_call[model] for model, count in calls.items())
        if job.what["role"] == "reference":
            self.runner.keep_output(job, video)
        else:
            result["scores"] = self.quality.of_call(video, self.runner.output(self.references[job.index]))
        if job.what.get("extras"):
            result["extras"] = call_extras(self.scorers, video, call_prompts(self.calls[job.index]))
        return result

    def _counted_flops(self, points: list[Point]) -> dict[Point, float]:
        """A cached point's FLOPs, counted on the first call (a cache skips work per call)."""
        jobs = [job for point in points for job in self._jobs(point, "flops", [0])]
        results = self.runner.run(jobs, self._count)
        return {point: result["flops"] for point, result in zip(points, results, strict=True)}

    def _count(self, job: Job) -> dict[str, Any]:
        point = Point.from_what(job.what["point"])
        kwargs = replay(self.calls[0])
        if point.solver:
            kwargs.pop("num_inference_steps", None)  # the step reduction owns it
        else:
            kwargs["num_inference_steps"] = point.steps
        with probing():
            schedule, stack = Schedule.parse(point.schedule), as_configs(point.stack)
            counted, _ = run_flops(self.target.pipe, self.target.small, schedule, kwargs, stack)
        return {"flops": sum(counted.values())}

    def _flop_ratio(self, point: Point, calls: dict[str, int], counted: float | None) -> float:
        reference = self.reference_large_calls * self.per_call["large"]
        if point.cache is None:  # exact: a call's work does not depend on its step
            return sum(n * self.per_call[m] for m, n in calls.items()) / reference
        return counted / reference

    def evaluate(self, point: Point, must_reach: Scores | None = None) -> Evaluation:
        """Score ``point``: its first fit call first, then (unless clearly below ``must_reach``) the rest."""
        return self.evaluate_all([point], must_reach)[0]

    def evaluate_all(self, points: list[Point], must_reach: Scores | None = None) -> list[Evaluation]:
        """Score every point not scored before: all their first calls in one round, then the rest of the
        calls of those not clearly below ``must_reach`` in the next."""
        new = [point for point in dict.fromkeys(points) if point not in self.evaluations]
        if new:
            screens = self._run([job for point in new for job in self._jobs(point, "score", [0])])
            counted = self._counted_flops([point for point in new if point.cache is not None])
            found = {
                point: self._screened(point, screen, counted.get(point), must_reach)
                for point, screen in zip(new, screens, strict=True)
            }
            kept = [point for point in new if not found[point].rejected]
            others = range(1, len(self.calls))
            rest = self._run([job for point in kept for job in self._jobs(point, "score", others)])
            for number, point in enumerate(kept):
                results = [
                    screens[new.index(point)],
                    *rest[number * len(others) : (number + 1) * len(others)],
                ]
                found[point].scores = self.quality.combine([result["scores"] for result in results])
                if point.adaptive is not None:  # its samples switch at their own steps: every call differs
                    found[point].flop_ratio = self._mean_flop_ratio(results)
            self.evaluations.update(found)
        return [self.evaluations[point] for point in points]

    def _mean_flop_ratio(self, results: list[dict[str, Any]]) -> float:
        """An uncached point's FLOPs over every call made, as a fraction of large-only's."""
        reference = self.reference_large_calls * self.per_call["large"]
        return sum(result["flops"] for result in results) / len(results) / reference

    def _screened(self, point: Point, screen: dict, counted: float | None, must_reach) -> Evaluation:
        evaluation = Evaluation(
            point, self._flop_ratio(point, screen["calls"], counted), calls=screen["calls"]
        )
        samples = self.quality.samples([screen["scores"]])
        evaluation.screen = {name: float(values.mean()) for name, values in samples.items()}
        evaluation.rejected = must_reach is not None and _clearly_below(samples, must_reach)
        return evaluation

    def held_out(self, points: dict[str, Point]) -> dict[str, dict[str, Any]]:
        """Every call of every point (no early rejection): scores with 95 % intervals against the large-only,
        full-step output, the target's own figures (e.g. the embedded classifier's accuracies) and the FLOP
        ratio, a row per name."""
        every = range(len(self.calls))
        results = self._run(
            [job for point in points.values() for job in self._jobs(point, "score", every, True)]
        )
        counted = self._counted_flops([point for point in points.values() if point.cache is not None])
        rows = {}
        for number, (name, point) in enumerate(points.items()):
            mine = results[number * len(self.calls) : (number + 1) * len(self.calls)]
            rows[name] = {
                "label": point.label(),
                "schedule": point.schedule,
                "stack": point.stack,
                "flop_ratio": self._mean_flop_ratio(mine)
                if point.adaptive is not None
                else self._flop_ratio(point, mine[-1]["calls"], counted.get(point)),
                "samples": sum(result["samples"] for result in mine),
                "scores": {},
                "extras": extras_row(mine),
            }
            if point != self.full:
                samples = self.quality.samples([result["scores"] for result in mine])
                rows[name]["scores"] = {score: mean_interval(values) for score, values in samples.items()}
        return rows

    def settling(self, window: Schedule, steps: int, solver: str | None) -> Settling:
        """The self-differences ``window`` reads on the fit calls at ``steps`` steps (one pass: every
        threshold's boundaries and FLOPs follow from it, see :mod:`.adaptive_fit`)."""
        if self.max_calls is not None and self.pipeline_calls + len(self.calls) > self.max_calls:
            raise BudgetSpent
        with solver_at(self.target, solver, steps) as step_arguments:
            calls = [{**kwargs, **step_arguments} for kwargs in self.calls]
            settling, _ = record_settling(
                self.target.pipe,
                self.target.small,
                calls,
                window,
                self.target.output,
                runner=self.runner,
                what={"pass": "tune settling", "solver": solver, "steps": steps},
            )
        return settling

    def placements(self, steps: int, solver: str | None, guidance: float) -> dict[int, list[tuple[str, ...]]]:
        """Per count ``k`` of small steps, the placements every divergence measure proposes along the
        large-only trajectory at ``steps`` steps (one curve: about two pipeline calls' work, one job)."""
        what = {"pass": "tune", "role": "placements", "steps": steps, "solver": solver, "guidance": guidance}
        (result,) = self.runner.run([Job(what, 0, self.identities[0])], self._propose)
        return {int(k): [tuple(models) for models in found] for k, found in result["proposals"].items()}

    def _propose(self, job: Job) -> dict[str, Any]:
        steps, solver, guidance = job.what["steps"], job.what["solver"], job.what["guidance"]
        with solver_at(self.target, solver, steps) as step_arguments, probing():
            calls = [{**self.calls[0], **step_arguments}]
            curve = divergence_curve(
                self.target.pipe, self.target.small, calls, guidance, output_field=self.target.output_field
            )
        proposals: dict[str, list[list[str]]] = {}
        for measure in curve.values:
            for k, (_, models) in best_placements(curve.mean(measure)).items():
                if list(models) not in proposals.setdefault(str(k), []):
                    proposals[str(k)].append(list(models))
        return {"proposals": proposals}


def _clearly_below(samples: dict[str, torch.Tensor], must_reach: Scores) -> bool:
    for name, minimum in must_reach.items():
        values = samples[name]
        error = float(values.std()) / math.sqrt(len(values)) if len(values) > 1 else 0.0
        if float(values.mean()) + 2 * error < minimum:
            return True
    return False
