"""Automatic stage boundaries: the cheapest schedule within a quality tolerance, or the best one within a
FLOP budget, with any number of stages.

1. One large-only pass over the calibration calls gives the reference outputs and, evaluating the small
   model beside it, a per-step divergence ``c_i`` (the proxy for the harm of running step ``i`` small).
2. For every count ``m`` of small steps, dynamic programming finds the placement minimising ``sum c_i``
   over small steps with at most ``max_small_segments`` contiguous small stages (more stages, more
   switches; each switch restarts caches).
3. Candidates are *verified*: generated on the calibration calls and scored against the large-only
   outputs with ``quality(outputs, reference)`` (higher is better). Under a tolerance, a bisection over
   ``m`` finds the most small steps whose verified quality stays above it; under a FLOP budget, the few
   best-proxy candidates that fit are verified and the best kept. When no candidate with a single small
   step passes, the answer is large-only, said plainly.

Cost: the analysis pass (~1 + small/large of one large-only generation) plus one generation per verified
candidate (bisection: about log2(steps) of them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch

from ..api import apply_flowblending_, remove_flowblending_
from ..schedule import Schedule, Stage
from .divergence import DivergenceCurve, divergence_curve, replay
from .transfer import Grid, Transfer, sigma_schedule, transfer


def schedule_from_models(models: list[str]) -> Schedule:
    """The step-axis schedule running ``models[i]`` at step ``i`` (exact shares ``count / N``)."""
    stages: list[list] = []
    for model in models:
        if stages and stages[-1][0] == model:
            stages[-1][1] += 1
        else:
            stages.append([model, 1])
    return Schedule(tuple(Stage(model, Fraction(count, len(models))) for model, count in stages))


def best_placements(costs: list[float], max_small_segments: int = 2) -> dict[int, tuple[float, list[str]]]:
    """For every number ``m`` of small steps, the placement with the least total cost (DP over steps)."""
    inf = math.inf
    # best[(m, k, last)] = (cost, models) after the steps seen so far; k = small segments opened.
    best: dict[tuple[int, int, str], tuple[float, list[str]]] = {(0, 0, "large"): (0.0, [])}
    for cost in costs:
        nxt: dict[tuple[int, int, str], tuple[float, list[str]]] = {}
        for (m, k, last), (total, models) in best.items():
            options = [("large", m, k, total)]
            opens = 0 if last == "small" else 1
            if k + opens <= max_small_segments:
                options.append(("small", m + 1, k + opens, total + cost))
            for model, m2, k2, t2 in options:
                key = (m2, k2, model)
                if t2 < nxt.get(key, (inf,))[0]:
                    nxt[key] = (t2, models + [model])
        best = nxt
    result: dict[int, tuple[float, list[str]]] = {}
    for (m, _, _), (total, models) in best.items():
        if total < result.get(m, (inf,))[0]:
            result[m] = (total, models)
    return dict(sorted(result.items()))


@dataclass
class Candidate:
    schedule: str
    small_steps: int
    proxy_cost: float
    flop_ratio: float
    quality: float | None = None

    @property
    def passed(self) -> bool:
        return self.quality is not None


@dataclass
class Calibration:
    schedule: str
    steps: int
    flop_ratio: float
    quality: float | None
    reference_quality: float | None
    measure: str
    message: str
    curve: DivergenceCurve
    candidates: list[Candidate] = field(default_factory=list)
    grid: Grid | None = None  # the solver grid calibrated on, for carrying the schedule elsewhere

    @property
    def models(self) -> list[str]:
        schedule = Schedule.parse(self.schedule)
        return [schedule.stages[k].model for k in schedule.stages_for_step_count(self.steps)]

    @property
    def sigma_schedule(self) -> str | None:
        return str(sigma_schedule(self.models, self.grid.noise)) if self.grid else None

    def transfer(self, scheduler: Any, num_inference_steps: int) -> Transfer:
        """This schedule on another scheduler / step count (sigma axis), with recalibration advice."""
        if self.grid is None:
            raise ValueError("this calibration did not record its solver grid; rerun calibrate to transfer it.")
        return transfer(self.models, self.grid, scheduler, num_inference_steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule, "sigma_schedule": self.sigma_schedule,
            "grid": self.grid.to_dict() if self.grid else None, "steps": self.steps, "flop_ratio": self.flop_ratio,
            "flops_fewer_than_large_only": 1 - self.flop_ratio, "quality": self.quality,
            "reference_quality": self.reference_quality, "measure": self.measure, "message": self.message,
            "candidates": [c.__dict__ for c in self.candidates], "curve": self.curve.to_dict(),
        }


class Calibrator:
    """Holds the calibration set and scores schedules on it (each verification is one generation)."""

    def __init__(self, pipe, small, calls: list[dict[str, Any]], guidance_scale: float,
                 flops_per_call: dict[str, float], quality: Callable[[list, list], float],
                 measure: str = "x0_cos", output_field: str = "frames", progress=None,
                 **router_options: Any) -> None:
        self.pipe, self.small, self.calls, self.router_options = pipe, small, calls, router_options
        self.flops, self.quality_fn, self.measure, self.field = flops_per_call, quality, measure, output_field
        self.progress = progress
        self.curve = divergence_curve(pipe, small, calls, guidance_scale, output_field=output_field,
                                      progress=progress, **router_options)
        if measure not in self.curve.values:
            raise ValueError(f"measure={measure!r} is not available for this scheduler; use one of {sorted(self.curve.values)}.")
        self.costs = self.curve.mean(measure)
        self.placements = best_placements(self.costs)
        self.tried: dict[str, Candidate] = {}

    def flop_ratio(self, m: int) -> float:
        n = len(self.costs)
        return ((n - m) * self.flops["large"] + m * self.flops["small"]) / (n * self.flops["large"])

    def candidate(self, m: int) -> Candidate:
        cost, models = self.placements[m]
        return Candidate(str(schedule_from_models(models)), m, cost, self.flop_ratio(m))

    def verify(self, candidate: Candidate) -> Candidate:
        if candidate.schedule in self.tried:
            return self.tried[candidate.schedule]
        candidate.quality = self.score(Schedule.parse(candidate.schedule))
        self.tried[candidate.schedule] = candidate
        return candidate

    def score(self, schedule: Schedule) -> float:
        apply_flowblending_(self.pipe, self.small, schedule, timing="off", **self.router_options)
        try:
            with torch.inference_mode():
                outputs = [getattr(self.pipe(**replay(kwargs)), self.field) for kwargs in self.calls]
        finally:
            remove_flowblending_(self.pipe)
        if self.progress is not None:
            self.progress(len(self.calls))
        return float(self.quality_fn(outputs, self.curve.outputs))


def calibrate_tolerance(calibrator: Calibrator, tolerance: float, reference: float | None = None) -> Calibration:
    """The most small steps whose verified quality is at least ``tolerance`` (bisection over m)."""
    n = len(calibrator.costs)
    low, high, best = 0, n - 1, None  # invariant: quality(low) passes (m = 0 is large-only)
    while low < high:
        m = (low + high + 1) // 2
        candidate = calibrator.verify(calibrator.candidate(m))
        if candidate.quality >= tolerance:
            low, best = m, candidate
        else:
            high = m - 1
    if best is None:
        return _result(calibrator, None, reference,
                       f"no schedule with a small step keeps quality >= {tolerance:g}: keep the large model only "
                       "(no saving is possible for this pair at this tolerance).")
    return _result(calibrator, best, reference, f"{best.small_steps} of {n} steps on the small model keep quality "
                   f"{best.quality:.4g} >= {tolerance:g}.")


def calibrate_budget(calibrator: Calibrator, flop_budget: float, reference: float | None = None,
                     verify: int = 3) -> Calibration:
    """The best verified quality among the best-proxy candidates within ``flop_budget`` (fraction of LLL)."""
    n = len(calibrator.costs)
    fitting = [m for m in range(n + 1) if calibrator.flop_ratio(m) <= flop_budget + 1e-12 and m in calibrator.placements]
    if not fitting:
        return _result(calibrator, None, reference, f"no schedule fits a FLOP budget of {flop_budget:g} of large-only.")
    candidates = [calibrator.verify(calibrator.candidate(m)) for m in fitting[:verify]]
    best = max(candidates, key=lambda c: c.quality)
    return _result(calibrator, best, reference, f"best verified quality within {flop_budget:.0%} of large-only FLOPs.")


def _result(calibrator: Calibrator, best: Candidate | None, reference: float | None, message: str) -> Calibration:
    n = len(calibrator.costs)
    return Calibration(
        schedule=best.schedule if best else "L100", steps=n, flop_ratio=best.flop_ratio if best else 1.0,
        quality=best.quality if best else None, reference_quality=reference, measure=calibrator.measure,
        message=message, curve=calibrator.curve, candidates=list(calibrator.tried.values()),
        grid=Grid.of(calibrator.pipe.scheduler, n),
    )
