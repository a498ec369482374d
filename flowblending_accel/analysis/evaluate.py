"""Score schedules on any pipeline: the quality function calibration verifies with, and the held-out
comparison of schedules against large-only (every scorer with a 95 % interval, the set scorers with their
sample counts, FLOPs from the calls each schedule made)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..accelerators import FlowBlendingConfig, flowblending
from ..core.api import flowblending_stats
from ..metrics.intervals import mean_interval
from ..metrics.scorers import Scorer, SetScorer, as_video
from .divergence import replay
from .scores import Scores, probing


def quality_function(scorers: list[Scorer]) -> Callable[[list, list], Scores]:
    """``quality(outputs, reference) -> {scorer: mean}``: each call's output against the large-only output
    of the same call (the calibration contract: higher is better)."""

    def quality(outputs: list, reference: list) -> Scores:
        a = torch.cat([as_video(output) for output in outputs])
        b = torch.cat([as_video(output) for output in reference])
        return {scorer.name: float(scorer.per_sample(a, b).double().mean()) for scorer in scorers}

    return quality


def generate(
    pipe: Any, small: Any, schedule: str, calls: list[dict], output: Callable, progress=None
) -> tuple[torch.Tensor, dict[str, int]]:
    """Every call under ``schedule``: the outputs as ``(N, F, C, H, W)`` and the calls per model (in whole
    batches: what FLOPs follow when an adaptive schedule splits a call by sample)."""
    videos, calls_per_model = [], {}
    with (
        probing(),
        flowblending(pipe, small, FlowBlendingConfig(schedule, timing="off")),
        torch.inference_mode(),
    ):
        for kwargs in calls:
            videos.append(as_video(output(pipe(**replay(kwargs)))))
            for model, count in flowblending_stats(pipe).batch_calls_per_model.items():
                calls_per_model[model] = calls_per_model.get(model, 0) + count
            if progress is not None:
                progress(1)
    return torch.cat(videos), calls_per_model


def evaluate_schedules(
    pipe: Any,
    small: Any,
    calls: list[dict],
    prompts: list[str | None],
    schedules: dict[str, str],
    scorers: list[Scorer],
    set_scorers: list[SetScorer],
    flops_per_call: dict[str, int],
    output: Callable,
    progress=None,
) -> dict[str, dict]:
    """Rows per schedule (``LLL`` first, the reference): ``prompts`` name each generated sample in order."""
    generated = {
        name: generate(pipe, small, schedule, calls, output, progress)
        for name, schedule in {"LLL": "L100", **schedules}.items()
    }
    reference, reference_calls = generated["LLL"]
    base_flops = _flops(reference_calls, flops_per_call)
    rows = {}
    for name, (videos, calls_per_model) in generated.items():
        row: dict[str, Any] = {
            "schedule": "L100" if name == "LLL" else schedules[name],
            "samples": len(videos),
            "flops_vs_lll": _flops(calls_per_model, flops_per_call) / base_flops,
            "scores": {},
            "extras": {},
            "sets": {},
        }
        for scorer in scorers:
            if name != "LLL":
                row["scores"][scorer.name] = mean_interval(scorer.per_sample(videos, reference))
            if scorer.extras is not None:
                row["extras"].update(scorer.extras(videos, prompts))
        for scorer in set_scorers:
            if name != "LLL":
                row["sets"][scorer.name] = {
                    "value": scorer.value(videos, reference),
                    "samples": len(videos),
                    "reference_samples": len(reference),
                }
        rows[name] = row
    return rows


def _flops(calls: dict[str, int], per_call: dict[str, int]) -> float:
    return float(sum(count * per_call[model] for model, count in calls.items()))
