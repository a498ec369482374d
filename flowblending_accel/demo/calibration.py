"""The demo pair's calibration set, its quality function, and the held-out evaluation of schedules.

Calibration uses a few prompts and seeds; the held-out evaluation uses the other prompts and fresh seeds, so
a calibrated schedule is judged on clips it never saw. Quality during calibration is feature similarity to
the large-only clip from the same noise, in the demo classifier's feature space; the held-out report adds
the semantic metrics (prompted digit and motion) and PSNR / SSIM.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..api import flowblending
from ..metrics.quality import psnr, ssim
from .classifier import ClipClassifier
from .data import all_prompts
from .models import demo_call_kwargs
from .scoring import classify, mean_interval


def split_prompts(calibration: int = 12) -> tuple[list[str], list[str]]:
    """Every third-ish prompt for calibration, the rest held out."""
    prompts = all_prompts()
    chosen = prompts[:: max(1, len(prompts) // calibration)][:calibration]
    return chosen, [p for p in prompts if p not in chosen]


def demo_calls(prompts: list[str], seeds: list[int], steps: int, guidance: float) -> list[dict[str, Any]]:
    """One batched call per seed; each sample has its own generator (seed * 1000 + index)."""
    return [
        demo_call_kwargs(prompts, [seed * 1000 + i for i in range(len(prompts))], steps, guidance)
        for seed in seeds
    ]


def as_clips(output) -> torch.Tensor:
    """``(B, F, H, W, C)`` numpy frames in [0, 1] -> ``(B, C, F, H, W)`` tensor."""
    return torch.from_numpy(np.asarray(output)).permute(0, 4, 1, 2, 3).float()


def feature_quality(classifier: ClipClassifier, pixel: bool = True):
    """quality(outputs, reference): mean cosine similarity of classifier features, clip vs its reference
    (what the clip shows), and with ``pixel`` also the mean SSIM (how faithfully it draws it). Calibration
    needs both: the classifier is blind to the fine noise a small model leaves when it finishes a clip."""

    @torch.no_grad()
    def quality(outputs: list, reference: list) -> dict[str, float]:
        features, structure = [], []
        for out, ref in zip(outputs, reference, strict=True):
            a, b = as_clips(out), as_clips(ref)
            features.append(F.cosine_similarity(classifier(a * 2 - 1)[2], classifier(b * 2 - 1)[2], dim=1))
            if pixel:
                structure.append(ssim(a, b))
        scores = {"feature_similarity": float(torch.cat(features).mean())}
        if pixel:
            scores["ssim"] = float(torch.cat(structure).mean())
        return scores

    return quality


def evaluate_schedules(
    pipe,
    small,
    classifier: ClipClassifier,
    schedules: dict[str, str],
    prompts: list[str],
    seeds: list[int],
    steps: int,
    guidance: float,
    flops_per_call: dict[str, int],
    progress=None,
) -> dict[str, dict[str, Any]]:
    """Generate every schedule on the same held-out prompts and seeds; score against large-only (``LLL``)."""
    outputs, calls = {}, {}
    for name, schedule in {"LLL": "L100", **schedules}.items():
        with flowblending(pipe, small, schedule, timing="off") as router, torch.inference_mode():
            clips = [
                as_clips(pipe(**kwargs).frames) for kwargs in demo_calls(prompts, seeds, steps, guidance)
            ]
            outputs[name], calls[name] = torch.cat(clips), router.last_run.calls_per_model
        if progress is not None:
            progress(1)
    labels = [p for _ in seeds for p in prompts]
    base_flops = _flops(calls["LLL"], flops_per_call)
    rows = {}
    for name in outputs:
        clips, reference = outputs[name], outputs["LLL"]
        semantic = classify(classifier, clips, labels)
        features = semantic.pop("features")
        _, _, reference_features = classifier(reference * 2 - 1)
        rows[name] = {
            "schedule": "L100" if name == "LLL" else schedules[name],
            "samples": len(labels),
            "flops_vs_lll": _flops(calls[name], flops_per_call) / base_flops,
            "feature_similarity_vs_lll": mean_interval(
                F.cosine_similarity(features, reference_features.detach(), dim=1)
            ),
            "psnr_vs_lll": mean_interval(psnr(clips, reference)) if name != "LLL" else None,
            "ssim_vs_lll": mean_interval(ssim(clips, reference)) if name != "LLL" else None,
            **semantic,
        }
    return rows


def _flops(calls: dict[str, int], per_call: dict[str, int]) -> float:
    return float(sum(count * per_call[model] for model, count in calls.items()))
