"""Score schedules on any pipeline: the quality function calibration verifies with, and the held-out
comparison of schedules against large-only (every scorer with a 95 % interval, the set scorers with their
sample counts, FLOPs from the calls each schedule made).

Every call of the comparison is one job of a :class:`~.call_runner.CallRunner`: large-only first (its outputs
kept: the reference), then every other schedule's calls, each scored per sample against the reference of the
same call, with its own figures (a classifier's hits) and set features, so the calls spread over ranks and
runs and the rows are computed from their journalled results."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..accelerators import FlowBlendingConfig, flowblending
from ..core.api import flowblending_stats
from ..metrics.intervals import interval_of, mean_interval
from ..metrics.scorers import Scorer, SetScorer, as_video
from .call_runner import CallRunner, Job, identities_of, jobs_over
from .divergence import replay
from .scores import SampleQuality, probing


def quality_function(scorers: list[Scorer]) -> SampleQuality:
    """``quality(outputs, reference) -> {scorer: mean}``: each call's output against the large-only output
    of the same call (the calibration contract: higher is better), scored per call."""
    return SampleQuality(scorers)


def call_prompts(kwargs: dict[str, Any]) -> list[str | None]:
    """The prompt of each sample of one call (``None`` where the call gives embeddings)."""
    prompt = kwargs.get("prompt")
    return list(prompt) if isinstance(prompt, list | tuple) else [prompt]


class HeldOut:
    """The held-out comparison's ``calls``, scored by ``scorers`` and ``set_scorers``."""

    def __init__(
        self, pipe, small, calls, scorers, set_scorers, output: Callable, runner, flops=None
    ) -> None:
        self.pipe, self.small, self.calls, self.output, self.flops = pipe, small, calls, output, flops or {}
        self.quality, self.set_scorers, self.runner = SampleQuality(scorers), set_scorers, runner
        self.scorers = scorers
        self.what = {"pass": "held-out", "scorers": self.quality.key, "sets": [s.name for s in set_scorers]}
        self.references = jobs_over({**self.what, "schedule": "L100"}, identities_of(calls))

    def run(self, schedules: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
        """Each schedule's per-call results (``LLL`` first: the reference, kept to score the others)."""
        results = {"LLL": self.runner.run(self.references, self._make, self._routed)}
        identities = [job.call for job in self.references]
        jobs = [
            job for s in schedules.values() for job in jobs_over({**self.what, "schedule": s}, identities)
        ]
        made = self.runner.run(jobs, self._make, self._routed)
        count = len(self.calls)
        for number, name in enumerate(schedules):
            results[name] = made[number * count : (number + 1) * count]
        return results

    @contextmanager
    def _routed(self, job: Job) -> Iterator[None]:
        config = FlowBlendingConfig(job.what["schedule"], timing="off")
        with probing(), flowblending(self.pipe, self.small, config), torch.inference_mode():
            yield

    def _make(self, job: Job) -> dict[str, Any]:
        video = as_video(self.output(self.pipe(**replay(self.calls[job.index]))))
        # In whole batches: what FLOPs follow when an adaptive schedule splits a call by sample.
        calls = dict(flowblending_stats(self.pipe).batch_calls_per_model)
        result: dict[str, Any] = {"calls": calls, "flops": _flops(calls, self.flops), "samples": len(video)}
        if job.what["schedule"] == "L100":
            self.runner.keep_output(job, video)
        else:
            result["scores"] = self.quality.of_call(video, self.runner.output(self.references[job.index]))
        result["extras"] = call_extras(self.scorers, video, call_prompts(self.calls[job.index]))
        result["features"] = {s.name: s.features(video).tolist() for s in self.set_scorers}
        return result


def call_extras(scorers: list[Scorer], video: torch.Tensor, prompts: list) -> dict[str, list]:
    """The scorers' own per-sample figures of one call (lists, journalled with it)."""
    found: dict[str, list] = {}
    for scorer in scorers:
        if scorer.extras is not None:
            found.update({name: values.tolist() for name, values in scorer.extras(video, prompts).items()})
    return found


def extras_row(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The per-sample figures of every call, as intervals."""
    names = results[0]["extras"] if results else {}
    return {name: interval_of([v for r in results for v in r["extras"][name]]) for name in names}


def sample_scores(results: list[dict[str, Any]], name: str) -> torch.Tensor:
    return torch.tensor([v for r in results for v in r["scores"][name]], dtype=torch.float64)


def calls_per_model(results: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for result in results:
        for model, count in result["calls"].items():
            total[model] = total.get(model, 0) + count
    return total


def evaluate_schedules(
    pipe: Any,
    small: Any,
    calls: list[dict],
    schedules: dict[str, str],
    scorers: list[Scorer],
    set_scorers: list[SetScorer],
    flops_per_call: dict[str, int],
    output: Callable,
    progress=None,
    runner: CallRunner | None = None,
) -> dict[str, dict]:
    """Rows per schedule (``LLL`` first, the reference); the calls are jobs of ``runner`` (none: one in
    memory, advancing ``progress``), a target's own figures read each call's prompts."""
    runner = runner if runner is not None else CallRunner(progress=progress)
    generated = HeldOut(pipe, small, calls, scorers, set_scorers, output, runner, flops_per_call).run(
        schedules
    )
    reference = generated["LLL"]
    base_flops = _flops(calls_per_model(reference), flops_per_call)
    rows = {}
    for name, results in generated.items():
        row: dict[str, Any] = {
            "schedule": "L100" if name == "LLL" else schedules[name],
            "samples": sum(r["samples"] for r in results),
            "flops_vs_lll": _flops(calls_per_model(results), flops_per_call) / base_flops,
            "scores": {},
            "extras": extras_row(results),
            "sets": {},
        }
        if name != "LLL":
            row["scores"] = {s.name: mean_interval(sample_scores(results, s.name)) for s in scorers}
            row["sets"] = {s.name: _set_value(s, results, reference) for s in set_scorers}
        rows[name] = row
    return rows


def _set_value(scorer: SetScorer, results: list[dict], reference: list[dict]) -> dict[str, Any]:
    features = torch.cat([torch.tensor(r["features"][scorer.name]) for r in results])
    reference_features = torch.cat([torch.tensor(r["features"][scorer.name]) for r in reference])
    return {
        "value": scorer.distance(features, reference_features),
        "samples": len(features),
        "reference_samples": len(reference_features),
    }


def _flops(calls: dict[str, int], per_call: dict[str, int]) -> float:
    return float(sum(count * per_call.get(model, 0) for model, count in calls.items()))
