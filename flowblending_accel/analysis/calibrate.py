"""Automatic stage boundaries: the cheapest schedule within a quality tolerance, or the best one within a
FLOP budget, with any number of stages.

1. One large-only pass over the calibration calls gives the reference outputs and, evaluating the small
   model beside it, a per-step divergence ``c_i`` (the proxy for the harm of running step ``i`` small).
2. For every count ``m`` of small steps, dynamic programming finds the placement minimising ``sum c_i``
   over small steps with at most ``max_small_segments`` contiguous small stages (more stages, more
   switches; each switch restarts caches).
   Every divergence measure proposes its own placement (they disagree: x0 divergence vanishes at low noise,
   where the state perturbation peaks), unless one ``measure`` is chosen.
3. Candidates are *verified*: generated on the calibration calls and scored against the large-only
   outputs with ``quality(outputs, reference)``, a float or a dict of named scores (higher is better; e.g.
   feature similarity *and* SSIM, so a schedule cannot buy semantic fidelity with pixel detail). A candidate
   passes when every score reaches its tolerance. Under a tolerance, a bisection over ``m`` finds the most
   small steps for which some proposal passes; under a FLOP budget, the proposals for the few largest
   budgets that fit are verified and the best (mean score) kept. When no candidate with a single small step
   passes, the answer is large-only, said plainly.

Cost: the analysis pass (~1 + small/large of one large-only generation) plus one generation per verified
candidate (bisection: about log2(steps) rounds of at most one proposal per measure).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ..accelerators import FlowBlendingConfig, flowblending
from ..core.plan import Plan
from ..core.schedule import Schedule
from .call_runner import CallRunner, Job, identities_of, jobs_over
from .divergence import DivergenceCurve, divergence_curve, replay, self_scores
from .evidence import window_evidence
from .journal import canonical
from .scores import Scores, as_quality, loss_ratio, margin, passes, probing
from .transfer import Grid, Transfer, sigma_schedule, transfer


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
    measure: str = ""  # the divergence measure that proposed it
    quality: Scores | None = None

    @property
    def mean_quality(self) -> float:
        return sum(self.quality.values()) / len(self.quality) if self.quality else float("-inf")


@dataclass
class Calibration:
    schedule: str
    steps: int
    flop_ratio: float
    quality: Scores | None
    reference_quality: Scores | None
    measure: str
    message: str
    curve: DivergenceCurve
    candidates: list[Candidate] = field(default_factory=list)
    grid: Grid | None = None  # the solver grid calibrated on, for carrying the schedule elsewhere
    settling: dict | None = None  # an adaptive schedule's: the self-differences its threshold was fit on

    @property
    def models(self) -> list[str]:
        return Schedule.parse(self.schedule).models_for_step_count(self.steps)

    @property
    def sigma_schedule(self) -> str | None:
        return str(sigma_schedule(self.models, self.grid.noise)) if self.grid else None

    def transfer(self, scheduler: Any, num_inference_steps: int) -> Transfer:
        """This schedule on another scheduler / step count (sigma axis), with recalibration advice."""
        if self.grid is None:
            raise ValueError(
                "this calibration did not record its solver grid; rerun calibrate to transfer it."
            )
        return transfer(self.models, self.grid, scheduler, num_inference_steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule,
            "sigma_schedule": self.sigma_schedule,
            "grid": self.grid.to_dict() if self.grid else None,
            "steps": self.steps,
            "flop_ratio": self.flop_ratio,
            "flops_fewer_than_large_only": 1 - self.flop_ratio,
            "quality": self.quality,
            "reference_quality": self.reference_quality,
            "measure": self.measure,
            "message": self.message,
            "candidates": [c.__dict__ for c in self.candidates],
            "curve": self.curve.to_dict(),
            "settling": self.settling,
        }


class Calibrator:
    """Holds the calibration set and scores schedules on it (each verification is one generation). Every
    call is a job of ``runner`` (none: one in memory, advancing ``progress``), so under torchrun the calls of
    a verification round spread over the ranks and every rank takes the same decision from their scores."""

    def __init__(
        self,
        pipe,
        small,
        calls: list[dict[str, Any]],
        guidance_scale: float,
        flops_per_call: dict[str, float],
        quality: Callable[[list, list], float | Scores],
        measure: str | None = None,
        output_field: str = "frames",
        progress=None,
        sensitivity_window: int = 0,
        refine: bool = True,
        runner: CallRunner | None = None,
        **router_options: Any,
    ) -> None:
        self.pipe, self.small, self.calls, self.router_options = pipe, small, calls, router_options
        self.flops, self.quality, self.field = flops_per_call, as_quality(quality), output_field
        self.runner = runner if runner is not None else CallRunner(progress=progress)
        self.refine = refine
        self.identities = identities_of(calls)
        self.curve = divergence_curve(
            pipe,
            small,
            calls,
            guidance_scale,
            output_field=output_field,
            runner=self.runner,
            quality=self.quality,
            **router_options,
        )
        if measure is not None and measure not in self.curve.values:
            raise ValueError(
                f"measure={measure!r} is not available for this scheduler; "
                f"use one of {sorted(self.curve.values)}."
            )
        self.measures = [measure] if measure else list(self.curve.values)
        self.measure = measure or "+".join(self.measures)
        self.costs = self.curve.mean(self.measures[0])
        self.placements = {name: best_placements(self.curve.mean(name)) for name in self.measures}
        self.evidence = None
        if sensitivity_window and measure is None:
            self.evidence = self._measure_sensitivity(sensitivity_window)
        self.proposed: dict[int, list[Candidate]] = {}
        self.tried: dict[str, Candidate] = {}

    @property
    def self_scores(self) -> Scores:
        """The outputs' scores against themselves (each score's ceiling; its names)."""
        return self_scores(self.curve, self.quality)

    def _measure_sensitivity(self, window: int):
        """Run the small model on each ``window`` of steps and measure the quality lost (every score); the
        per-step cost is the largest of the scores' losses, each as a share of its total, so placements that
        keep *every* score are proposed (``measured_loss``)."""
        evidence = window_evidence(
            self.pipe,
            self.small,
            self.calls,
            self.curve,
            window,
            self.quality,
            self.field,
            runner=self.runner,
            **self.router_options,
        )
        shares = {
            name: [max(v, 0.0) / (sum(max(x, 0.0) for x in loss) or 1.0) for v in loss]
            for name, loss in evidence.loss.items()
        }
        costs = [
            max(share[i // window] for share in shares.values()) / window for i in range(len(self.costs))
        ]
        self.placements["measured_loss"] = best_placements(costs)
        return evidence

    def models_of(self, schedule: str) -> list[str]:
        plan = Plan.for_scheduler(Schedule.parse(schedule), self.pipe.scheduler, len(self.costs))
        return [step.model for step in plan.steps]

    def propose(self, schedule: str, by: str = "given") -> Candidate:
        """Add a schedule of one's own (e.g. the hand-picked one) to the proposals for its small-step
        count."""
        models = self.models_of(schedule)
        m = models.count("small")
        candidate = Candidate(str(Schedule.from_models(models)), m, float("nan"), self.flop_ratio(m), by)
        if candidate.schedule in self.tried:
            return self.tried[candidate.schedule]
        self.proposed.setdefault(m, []).append(candidate)
        return candidate

    def flop_ratio(self, m: int) -> float:
        n = len(self.costs)
        return ((n - m) * self.flops["large"] + m * self.flops["small"]) / (n * self.flops["large"])

    def candidates(self, m: int) -> list[Candidate]:
        """One proposal per measure for ``m`` small steps (duplicates dropped)."""
        proposals: dict[str, Candidate] = {c.schedule: c for c in self.proposed.get(m, [])}
        for name, placements in self.placements.items():
            cost, models = placements[m]
            schedule = str(Schedule.from_models(models))
            proposals.setdefault(schedule, Candidate(schedule, m, cost, self.flop_ratio(m), name))
        return list(proposals.values())

    def verify(self, candidate: Candidate) -> Candidate:
        return self.verify_all([candidate])[0]

    def verify_all(self, candidates: list[Candidate]) -> list[Candidate]:
        """Every candidate scored (those not tried before: every call of every one in one round of jobs)."""
        new = list({c.schedule: c for c in candidates if c.schedule not in self.tried}.values())
        for candidate, scores in zip(new, self.score_all([c.schedule for c in new]), strict=True):
            candidate.quality = scores
            self.tried[candidate.schedule] = candidate
        return [self.tried[c.schedule] for c in candidates]

    def score(self, schedule: Schedule) -> Scores:
        return self.score_all([str(schedule)])[0]

    def score_all(self, schedules: list[str]) -> list[Scores]:
        """Each schedule's scores on the calibration calls against the large-only outputs."""
        what = {"pass": "verify", "router": canonical(self.router_options), "scorers": self.quality.key}
        jobs = [job for s in schedules for job in jobs_over({**what, "schedule": s}, self.identities)]
        results = self.runner.run(jobs, self._generate_scored, self._routed)
        count = len(self.calls)
        return [self.quality.combine(results[i * count : (i + 1) * count]) for i in range(len(schedules))]

    @contextmanager
    def _routed(self, job: Job) -> Iterator[None]:
        # Candidates are probes: advice meant for a user's chosen schedule (e.g. "ends small") is noise here.
        schedule = Schedule.parse(job.what["schedule"])
        config = FlowBlendingConfig(schedule, timing="off", **self.router_options)
        with probing(), flowblending(self.pipe, self.small, config), torch.inference_mode():
            yield

    def _generate_scored(self, job: Job) -> Any:
        output = self.quality.prepare(getattr(self.pipe(**replay(self.calls[job.index])), self.field))
        return self.quality.of_call(output, self.curve.outputs[job.index])

    def best_verified(self, m: int, tolerance: Scores | None = None) -> Candidate | None:
        """The best-scoring proposal for ``m`` small steps (passing ``tolerance`` when given), or None."""
        verified = self.verify_all(self.candidates(m))
        if tolerance is not None:
            verified = [c for c in verified if passes(c.quality, tolerance)]
        return max(verified, key=lambda c: c.mean_quality, default=None)


def shifted(models: list[str]) -> list[list[str]]:
    """Placements with one small stage moved a step earlier or later (same number of small steps)."""
    n, result = len(models), []
    starts = [i for i in range(n) if models[i] == "small" and (i == 0 or models[i - 1] == "large")]
    for start in starts:
        end = next((j for j in range(start, n) if models[j] == "large"), n)  # one past the stage
        if start > 0:
            result.append(models[: start - 1] + ["small"] * (end - start) + ["large"] + models[end:])
        if end < n:
            result.append(models[:start] + ["large"] + ["small"] * (end - start) + models[end + 1 :])
    return result


def refine(calibrator: Calibrator, m: int, tolerance: Scores, rounds: int = 3) -> Candidate | None:
    """Hill-climb from the best-margin proposal for ``m`` small steps, moving one small stage a step at a
    time, until a placement passes (verified) or no move helps. The proxies rank where the small model
    hurts; this settles the boundary between scores that pull in opposite directions (e.g. semantic
    fidelity wants more early large steps, pixel fidelity more late ones)."""
    current = max(calibrator.verify_all(calibrator.candidates(m)), key=lambda c: margin(c.quality, tolerance))
    for _ in range(rounds):
        if margin(current.quality, tolerance) >= -1e-12:
            return current
        neighbours = calibrator.verify_all(
            [
                calibrator.propose(str(Schedule.from_models(models)), "refined")
                for models in shifted(calibrator.models_of(current.schedule))
            ]
        )
        best = max(neighbours, key=lambda c: margin(c.quality, tolerance), default=None)
        if best is None or margin(best.quality, tolerance) <= margin(current.quality, tolerance):
            return None
        current = best
    return current if margin(current.quality, tolerance) >= -1e-12 else None


def calibrate_tolerance(
    calibrator: Calibrator, tolerance: float | Scores, reference: Scores | None = None
) -> Calibration:
    """The most small steps for which a proposal's verified scores all reach ``tolerance`` (bisection over m).
    A float tolerance applies to every score."""
    n = len(calibrator.costs)
    if not isinstance(tolerance, dict):
        names = reference or calibrator.self_scores
        tolerance = {name: float(tolerance) for name in names}
    low, high, best = 0, n - 1, None  # invariant: m = low passes (m = 0 is large-only)
    while low < high:
        m = (low + high + 1) // 2
        found = calibrator.best_verified(m, tolerance) or (
            refine(calibrator, m, tolerance) if calibrator.refine else None
        )
        if found is not None:
            low, best = m, found
        else:
            high = m - 1
    wanted = ", ".join(f"{name} >= {value:.4g}" for name, value in tolerance.items())
    if best is None:
        return _result(
            calibrator,
            None,
            reference,
            f"no schedule with a small step keeps {wanted}: keep the large model only "
            "(no saving is possible for this pair at this tolerance).",
        )
    return _result(
        calibrator,
        best,
        reference,
        f"{best.small_steps} of {n} steps on the small model keep {wanted} (proposed by {best.measure}).",
    )


def calibrate_budget(
    calibrator: Calibrator, flop_budget: float, reference: Scores | None = None, verify: int = 3
) -> Calibration:
    """The best verified quality among the proposals for the ``verify`` least-saving step counts within
    ``flop_budget`` (a fraction of large-only FLOPs): the smallest worst-score loss relative to
    ``reference`` (:func:`.scores.loss_ratio`), or the best mean score without one."""
    n = len(calibrator.costs)
    fitting = [m for m in range(n + 1) if calibrator.flop_ratio(m) <= flop_budget + 1e-12]
    if not fitting:
        return _result(
            calibrator, None, reference, f"no schedule fits a FLOP budget of {flop_budget:g} of large-only."
        )
    verified = calibrator.verify_all([c for m in fitting[:verify] for c in calibrator.candidates(m)])
    if reference:
        best = min(verified, key=lambda c: loss_ratio(c.quality, reference))
    else:
        best = max(verified, key=lambda c: c.mean_quality)
    return _result(
        calibrator,
        best,
        reference,
        f"best verified quality within {flop_budget:.0%} of large-only FLOPs (proposed by {best.measure}).",
    )


def _result(
    calibrator: Calibrator, best: Candidate | None, reference: Scores | None, message: str
) -> Calibration:
    n = len(calibrator.costs)
    return Calibration(
        schedule=best.schedule if best else "L100",
        steps=n,
        flop_ratio=best.flop_ratio if best else 1.0,
        quality=best.quality if best else None,
        reference_quality=reference,
        measure=calibrator.measure,
        message=message,
        curve=calibrator.curve,
        candidates=list(calibrator.tried.values()),
        grid=Grid.of(calibrator.pipe.scheduler, n),
    )
