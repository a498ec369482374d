"""Quality scores as calibration uses them: a quality function returns one float or named scores (higher is
better), and a tolerance is a minimum per score."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from ..core.schedule import FlowBlendingWarning

Scores = dict[str, float]


def as_scores(value: float | Scores) -> Scores:
    return dict(value) if isinstance(value, dict) else {"quality": float(value)}


def passes(scores: Scores, tolerance: Scores) -> bool:
    return all(scores[name] >= minimum - 1e-12 for name, minimum in tolerance.items())


def margin(scores: Scores, tolerance: Scores) -> float:
    """How far the worst score is above its tolerance, relative to the tolerance (negative: fails)."""
    return min((scores[name] - minimum) / (abs(minimum) or 1.0) for name, minimum in tolerance.items())


def loss_ratio(scores: Scores, reference: Scores) -> float:
    """The worst score's loss as a multiple of the reference's loss (1: as good as the reference; lower is
    better). A similarity bounded by 1 (SSIM, feature cosine) loses ``1 - s``; any other score (PSNR in dB)
    is taken relative: ``reference / s``. Unlike a mean of raw scores, no score's range outweighs
    another's."""
    worst = 0.0
    for name, ref in reference.items():
        score = scores[name]
        if ref <= 1.0 and score <= 1.0:
            ratio = (1.0 - score) / max(1.0 - ref, 1e-9)
        else:
            ratio = ref / score if score > 0 else float("inf")
        worst = max(worst, ratio)
    return worst


@contextmanager
def probing() -> Iterator[None]:
    """Schedules generated as probes (candidates, windows): advice meant for a user's own schedule, such as
    "ends on the small model", would be noise here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FlowBlendingWarning)
        yield
