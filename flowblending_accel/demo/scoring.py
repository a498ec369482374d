"""Score the demo comparison: speed and FLOPs against LLL, fidelity to the same-seed LLL output, temporal
consistency, and the classifier's semantic measures (prompted digit and motion, Fréchet distance to real
clips of held-out writers). Every mean comes with a 95 % interval: normal for means, Wilson for accuracies.
"""

from __future__ import annotations

import statistics

import torch

from ..metrics.intervals import mean_interval, proportion_interval
from ..metrics.quality import frechet_distance, psnr, ssim, temporal_consistency
from .classifier import ClipClassifier
from .compared_schedules import SCHEDULES
from .data import DIRECTIONS, parse_prompt, reference_clips
from .generate import Generated
from .timing import Timing


@torch.no_grad()
def hits(classifier: ClipClassifier, clips01: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Per clip: whether the classifier reads the prompted digit and motion (bool), and its features."""
    digit_logits, direction_logits, features = classifier(clips01 * 2 - 1)
    digits = torch.tensor([parse_prompt(p)[0] for p in prompts])
    directions = torch.tensor([DIRECTIONS.index(parse_prompt(p)[1]) for p in prompts])
    return {
        "digit_accuracy": digit_logits.argmax(1) == digits,
        "direction_accuracy": direction_logits.argmax(1) == directions,
        "features": features,
    }


def classify(classifier: ClipClassifier, clips01: torch.Tensor, prompts: list[str]) -> dict:
    found = hits(classifier, clips01, prompts)
    return {
        "digit_accuracy": proportion_interval(int(found["digit_accuracy"].sum()), len(prompts)),
        "direction_accuracy": proportion_interval(int(found["direction_accuracy"].sum()), len(prompts)),
        "features": found["features"],
    }


def frechet_with_spread(
    features: torch.Tensor, real: torch.Tensor, resamples: int = 20, seed: int = 0
) -> dict:
    """FD, the standard deviation of FD over bootstrap resamples of the generated set, and the sample
    counts (FD depends on them: the same pair gave 47.5 at 160 clips and 110 at 40)."""
    generator = torch.Generator().manual_seed(seed)
    boots = [
        frechet_distance(features[torch.randint(len(features), (len(features),), generator=generator)], real)
        for _ in range(resamples)
    ]
    return {
        "value": frechet_distance(features, real),
        "bootstrap_sd": statistics.pstdev(boots),
        "samples": len(features),
        "reference_samples": len(real),
    }


def score(generated: Generated, classifier: ClipClassifier) -> dict:
    """Rows per schedule (plus a ``real`` reference row) and the run's settings."""
    count = generated.done
    prompts = [prompt for prompt, _ in generated.samples[:count]]
    real = reference_clips(prompts, seed=generated.settings.base_seed + 7)
    real01 = (real.clips + 1) / 2
    real_scores = classify(classifier, real01, prompts)
    real_features = real_scores.pop("features")
    other_real = classify(
        classifier, (reference_clips(prompts, seed=generated.settings.base_seed + 8).clips + 1) / 2, prompts
    )
    rows = {
        "real": {
            **real_scores,
            "fd_to_real": frechet_with_spread(other_real["features"], real_features),
            "temporal_consistency": mean_interval(temporal_consistency(real01)),
        }
    }
    baseline = generated.stacked("LLL")
    flops = generated.flops_per_sample_call
    baseline_flops = _flops(generated.total_calls("LLL"), flops)
    for name in generated.settings.schedules:
        frames = generated.stacked(name)
        semantic = classify(classifier, frames, prompts)
        features = semantic.pop("features")
        total_flops = _flops(generated.total_calls(name), flops)
        rows[name] = {
            "schedule": SCHEDULES.get(name, name),
            "samples": count,
            **_speed(generated, name),
            "calls_per_sample": {m: c / count for m, c in generated.total_calls(name).items()},
            "gflops_per_sample": total_flops / count / 1e9,
            "flops_vs_lll": total_flops / baseline_flops,
            "psnr_vs_lll": mean_interval(psnr(frames, baseline)) if name != "LLL" else None,
            "ssim_vs_lll": mean_interval(ssim(frames, baseline)) if name != "LLL" else None,
            "temporal_consistency": mean_interval(temporal_consistency(frames)),
            **semantic,
            "fd_to_real": frechet_with_spread(features, real_features),
        }
        if name in generated.boundaries:
            rows[name]["boundaries"] = boundary_summary(generated.boundaries[name])
    return rows


def boundary_summary(chunks: list[list[int]]) -> dict:
    """An adaptive schedule's boundaries (the step each sample entered the small stage): mean, range and
    how many samples took each step."""
    taken = [step for chunk in chunks for step in chunk if step is not None]
    counts = {str(step): taken.count(step) for step in sorted(set(taken))}
    mean = sum(taken) / len(taken) if taken else None
    return {"mean": mean, "min": min(taken, default=None), "max": max(taken, default=None), "counts": counts}


def _flops(calls: dict[str, int], per_call: dict[str, int]) -> float:
    return sum(calls[model] * per_call[model] for model in calls)


def _speed(generated: Generated, name: str) -> dict:
    """The timing phase's speedup, or (interrupted before it) the generation chunks', marked unreliable."""
    if generated.timing is not None and generated.timing.rounds:
        return {"speedup_vs_lll": generated.timing.speedup(name)}
    chunks = Timing(generated.settings.chunk_size, {n: generated.seconds[n] for n in ("LLL", name)})
    return {"speedup_vs_lll": {**chunks.speedup(name), "reliable": False, "basis": "generation chunks"}}
