"""Which divergence measure predicts where the small model hurts? Substitute it in windows and see.

For each window of ``w`` consecutive steps, generate with the small model on that window only (large
elsewhere) and measure the quality lost against the large-only output, for every score the quality function
returns (e.g. feature similarity and SSIM: they need not agree on where the small model hurts). A good proxy
ranks the windows the way the measured loss does: we report Spearman's rank correlation between each
measure's per-window sum and each score's measured loss. Cost: one generation of the calibration set per
window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ..accelerators import FlowBlendingConfig, flowblending
from ..core.schedule import Schedule
from .call_runner import CallRunner, Job, identities_of, jobs_over
from .divergence import DivergenceCurve, replay, self_scores
from .journal import canonical
from .scores import Scores, as_quality, probing


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""

    def ranks(values: list[float]) -> torch.Tensor:
        order = sorted(range(len(values)), key=lambda i: values[i])
        result = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                result[order[k]] = (i + j) / 2
            i = j + 1
        return torch.tensor(result, dtype=torch.float64)

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = (ra.norm() * rb.norm()).item()
    return float((ra * rb).sum() / denominator) if denominator else float("nan")


@dataclass
class WindowEvidence:
    window: int
    starts: list[int]
    loss: dict[str, list[float]]  # score -> quality lost against large-only, per window
    correlations: dict[str, dict[str, float]]  # score -> measure -> Spearman rho with that score's loss

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def window_evidence(
    pipe,
    small,
    calls: list[dict[str, Any]],
    curve: DivergenceCurve,
    window: int,
    quality: Callable[[list, list], float | Scores],
    output_field: str = "frames",
    progress=None,
    runner: CallRunner | None = None,
    **router_options: Any,
) -> WindowEvidence:
    """The quality lost per window of ``window`` steps run small; every window x call is one job of
    ``runner`` (none: one in memory, advancing ``progress``), scored against ``curve``'s kept outputs."""
    runner = runner if runner is not None else CallRunner(progress=progress)
    quality = as_quality(quality)
    steps = len(curve.sigmas)
    reference = self_scores(curve, quality)
    starts, identities = list(range(0, steps, window)), identities_of(calls)
    what = {"pass": "window", "window": window, "router": canonical(router_options), "scorers": quality.key}
    jobs = [job for start in starts for job in jobs_over({**what, "start": start}, identities)]

    @contextmanager
    def routed(job: Job) -> Iterator[None]:
        start = job.what["start"]
        models = ["small" if start <= i < start + window else "large" for i in range(steps)]
        config = FlowBlendingConfig(Schedule.from_models(models), timing="off", **router_options)
        with probing(), flowblending(pipe, small, config), torch.inference_mode():
            yield

    def make(job: Job) -> Any:
        output = quality.prepare(getattr(pipe(**replay(calls[job.index])), output_field))
        return quality.of_call(output, curve.outputs[job.index])

    results = runner.run(jobs, make, routed)
    losses: dict[str, list[float]] = {name: [] for name in reference}
    for number in range(len(starts)):
        scores = quality.combine(results[number * len(calls) : (number + 1) * len(calls)])
        for name in reference:
            losses[name].append(reference[name] - scores[name])
    sums = {measure: [sum(curve.mean(measure)[s : s + window]) for s in starts] for measure in curve.values}
    correlations = {
        name: {measure: spearman(sums[measure], loss) for measure in curve.values}
        for name, loss in losses.items()
    }
    return WindowEvidence(window, starts, losses, correlations)
