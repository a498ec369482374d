"""Fit the threshold of an adaptive schedule (``"L20:60-S-L20"`` → ``"L20:60~0.03-S-L20"``).

A sample's large-model outputs up to its switch do not depend on the threshold (same noise, same large
steps), so one run that never switches before the ceiling (threshold 0) reads every self-difference any
threshold could act on. From it, for every threshold, the step each sample would switch at, and so the
FLOPs, follow exactly without generating (:class:`Settling`). Quality still has to be generated: the fits
below verify the thresholds they choose.

* under a FLOP budget: the lowest threshold (the latest switches, so presumably the best quality) whose mean
  FLOPs fit, verified once;
* at a FLOP target (equal-FLOP comparisons): the threshold whose mean FLOPs are closest to it;
* under a quality tolerance: a bisection over the thresholds that change some sample's boundary for the
  highest one whose verified scores all pass.

:func:`calibrate_adaptive` is ``calibrate --adaptive``; tune searches the same thresholds as one of its knobs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ..accelerators import FlowBlendingConfig, flowblending
from ..core.api import add_flowblending_listener, flowblending_routers
from ..core.listeners import RouterListener
from ..core.schedule import Schedule
from .calibrate import Calibration, Calibrator, Candidate
from .call_runner import CallRunner, Job, identities_of, jobs_over
from .divergence import replay
from .journal import canonical
from .scores import Scores, passes, probing


@dataclass
class Settling:
    """Per sample, the self-differences an adaptive schedule's window reads, and where its steps lie.

    ``differences[i][t]`` is sample ``i``'s self-difference after step ``t``, which the switch reads at step
    ``t + 1``; ``window`` is ``(first, ceiling)``, ``late_start`` the final large stage's first step and
    ``steps`` the run's solver steps (from ``first_step``)."""

    schedule: Schedule
    window: tuple[int, int]
    late_start: int
    steps: int
    first_step: int = 0
    differences: list[dict[int, float]] = field(default_factory=list)

    def boundaries(self, threshold: float) -> list[int]:
        """The step each sample would enter the small stage at under ``threshold``."""
        first, ceiling = self.window
        return [
            next((t for t in range(first, ceiling) if seen.get(t - 1, math.inf) < threshold), ceiling)
            for seen in self.differences
        ]

    def flop_ratio(self, threshold: float, flops_per_call: dict[str, float]) -> float:
        """Mean FLOPs over the samples as a fraction of large-only (every step costs one model's calls)."""
        small_share = flops_per_call["small"] / flops_per_call["large"]
        end = self.first_step + self.steps
        per_sample = [
            (boundary - self.first_step + end - self.late_start + (self.late_start - boundary) * small_share)
            / self.steps
            for boundary in self.boundaries(threshold)
        ]
        return sum(per_sample) / len(per_sample)

    def thresholds(self) -> list[float]:
        """Every threshold that changes some sample's boundary, ascending (0 first: no early switch): the
        shortest decimal above a self-difference and not above the next one, so the sample whose difference
        it is switches there and nothing else changes."""
        first, ceiling = self.window
        values = sorted(
            {seen[t - 1] for seen in self.differences for t in range(first, ceiling) if t - 1 in seen}
        )
        above = zip(values, [*values[1:], math.inf], strict=True)
        return [0.0] + [_shortest_above(low, high) for low, high in above]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schedule": str(self.schedule),
            "window": list(self.window),
            "late_start": self.late_start,
            "steps": self.steps,
            "differences": [{str(t): v for t, v in seen.items()} for seen in self.differences],
        }


def _shortest_above(low: float, high: float) -> float:
    """The decimal with the fewest places in ``(low, high]`` (thresholds a person can read and write)."""
    for places in range(1, 18):
        scale = 10**places
        value = (math.floor(low * scale) + 1) / scale
        if low < value <= high:
            return value
    return math.nextafter(low, math.inf)


def record_settling(
    pipe,
    small,
    calls: list[dict[str, Any]],
    window: Schedule,
    output: Callable,
    progress=None,
    listeners: tuple[RouterListener, ...] = (),
    runner: CallRunner | None = None,
    score: Callable[[int, Any], Any] | None = None,
    what: dict[str, Any] | None = None,
) -> tuple[Settling, list]:
    """Run ``window`` with threshold 0 on every call: its :class:`Settling` and, per call, ``score(index,
    output)`` of its output (the latest layout's, every sample switching at the ceiling; ``None`` without
    ``score``). Each call is a job of ``runner`` (none: one in memory, advancing ``progress``), so under
    torchrun the calls spread over the ranks and a resumed run reads them from the journal; ``what`` adds to
    the jobs' identity what the calls alone do not say (e.g. the solver). ``listeners`` follow the runs made
    here."""
    never = window.with_threshold(0.0)
    runner = runner if runner is not None else CallRunner(progress=progress)
    jobs = jobs_over({"pass": "settling", "schedule": str(never), **(what or {})}, identities_of(calls))

    @contextmanager
    def routed(_job: Job) -> Iterator[None]:
        config = FlowBlendingConfig(never, timing="off")
        with probing(), flowblending(pipe, small, config), torch.inference_mode():
            for listener in listeners:
                add_flowblending_listener(pipe, listener)
            yield

    def make(job: Job) -> dict[str, Any]:
        result = output(pipe(**replay(calls[job.index])))
        (router,) = flowblending_routers(pipe)  # an adaptive schedule routes one denoiser
        stats = router.last_run
        return {
            "window": list(stats.switch_window),
            "late_start": stats.late_start,
            "steps": stats.num_steps,
            "first_step": stats.first_step,
            "differences": [
                {str(t): v for t, v in seen.items()}
                for seen in _per_sample(stats.self_difference, stats.batch_samples or 1)
            ],
            "score": None if score is None else score(job.index, result),
        }

    results = runner.run(jobs, make, routed)
    first = results[0]
    settling = Settling(
        window, tuple(first["window"]), first["late_start"], first["steps"], first["first_step"]
    )
    for result in results:
        settling.differences += [{int(t): v for t, v in seen.items()} for seen in result["differences"]]
    return settling, [result["score"] for result in results]


def _per_sample(by_step: dict[int, list[float | None]], samples: int) -> list[dict[int, float]]:
    return [
        {step: values[i] for step, values in by_step.items() if values[i] is not None} for i in range(samples)
    ]


def threshold_at_flops(settling: Settling, target: float, flops_per_call: dict[str, float]) -> float:
    """The threshold whose mean FLOPs are closest to ``target`` (a fraction of large-only; the lower
    threshold on a tie)."""
    return min(settling.thresholds(), key=lambda t: (abs(settling.flop_ratio(t, flops_per_call) - target), t))


def threshold_within(settling: Settling, budget: float, flops_per_call: dict[str, float]) -> float | None:
    """The lowest threshold whose mean FLOPs fit ``budget`` (None: not even switching at the floor does)."""
    return next(
        (t for t in settling.thresholds() if settling.flop_ratio(t, flops_per_call) <= budget + 1e-12), None
    )


def threshold_passing(
    settling: Settling, verify: Callable[[float], Scores], tolerance: Scores
) -> tuple[float, Scores] | None:
    """The highest threshold whose verified scores all reach ``tolerance`` (bisection: a higher threshold
    switches earlier, so it can only lose quality), with its scores; None when not even threshold 0 (every
    sample at the ceiling) passes."""
    candidates = settling.thresholds()
    scores = verify(candidates[0])
    if not passes(scores, tolerance):
        return None
    best, low, high = (candidates[0], scores), 0, len(candidates) - 1
    while low < high:
        middle = (low + high + 1) // 2
        scores = verify(candidates[middle])
        if passes(scores, tolerance):
            best, low = (candidates[middle], scores), middle
        else:
            high = middle - 1
    return best


def calibrate_adaptive(
    calibrator: Calibrator,
    window: Schedule,
    tolerance: Scores | None = None,
    flop_budget: float | None = None,
    reference: Scores | None = None,
) -> Calibration:
    """The threshold of ``window`` (an adaptive schedule, its threshold left to the fit) under a FLOP budget
    or a quality tolerance, on the calibrator's fit calls (one settling pass, then verifications)."""
    scorer = calibrator.quality

    def scored(index: int, result: Any) -> Any:  # the latest layout's scores: threshold 0 needs no new run
        video = scorer.prepare(getattr(result, calibrator.field))
        return scorer.of_call(video, calibrator.curve.outputs[index])

    settling, latest = record_settling(
        calibrator.pipe,
        calibrator.small,
        calibrator.calls,
        window,
        lambda result: result,
        runner=calibrator.runner,
        score=scored,
        what={"router": canonical(calibrator.router_options), "scorers": scorer.key},
    )
    verified: dict[float, Candidate] = {}

    def verify(threshold: float) -> Scores:
        if threshold not in verified:
            schedule = window.with_threshold(threshold)
            quality = scorer.combine(latest) if threshold == 0 else calibrator.score(schedule)
            verified[threshold] = _candidate(settling, schedule, calibrator.flops, quality)
        return verified[threshold].quality

    if flop_budget is not None:
        threshold = threshold_within(settling, flop_budget, calibrator.flops)
        found = None if threshold is None else (threshold, verify(threshold))
        wanted = f"mean FLOPs within {flop_budget:.0%} of large-only"
    else:
        found = threshold_passing(settling, verify, tolerance)
        wanted = "keeping " + ", ".join(f"{name} >= {value:.4g}" for name, value in tolerance.items())
    candidates = list(verified.values())
    if found is None:
        message = f"no threshold of {window.adaptive_text()} gives {wanted}: keep the large model only."
        return _adaptive_result(calibrator, None, reference, message, candidates, settling)
    best = verified[found[0]]
    message = (
        f"the highest-saving threshold of {window.adaptive_text()} {wanted}: each sample switches at its own "
        "step."
    )
    return _adaptive_result(calibrator, best, reference, message, candidates, settling)


def _candidate(settling: Settling, schedule: Schedule, flops: dict, quality: Scores) -> Candidate:
    threshold = schedule.adaptive.threshold
    boundaries = settling.boundaries(threshold)
    small = sum(settling.late_start - b for b in boundaries) / len(boundaries)
    ratio = settling.flop_ratio(threshold, flops)
    return Candidate(str(schedule), round(small, 2), float("nan"), ratio, "self-difference", quality)


def _adaptive_result(calibrator, best, reference, message, candidates, settling) -> Calibration:
    return Calibration(
        schedule=best.schedule if best else "L100",
        steps=len(calibrator.costs),
        flop_ratio=best.flop_ratio if best else 1.0,
        quality=best.quality if best else None,
        reference_quality=reference,
        measure="self-difference (adaptive)",
        message=message,
        curve=calibrator.curve,
        candidates=candidates,
        settling=settling.to_dict(),
    )
