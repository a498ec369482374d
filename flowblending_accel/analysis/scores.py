"""Quality scores as calibration uses them: a quality function returns one float or named scores (higher is
better), and a tolerance is a minimum per score."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from ..schedule import FlowBlendingWarning

Scores = dict[str, float]


def as_scores(value: float | Scores) -> Scores:
    return dict(value) if isinstance(value, dict) else {"quality": float(value)}


def passes(scores: Scores, tolerance: Scores) -> bool:
    return all(scores[name] >= minimum - 1e-12 for name, minimum in tolerance.items())


def margin(scores: Scores, tolerance: Scores) -> float:
    """How far the worst score is above its tolerance, relative to the tolerance (negative: fails)."""
    return min((scores[name] - minimum) / (abs(minimum) or 1.0) for name, minimum in tolerance.items())


@contextmanager
def probing() -> Iterator[None]:
    """Schedules generated as probes (candidates, windows): advice meant for a user's own schedule, such as
    "ends on the small model", would be noise here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FlowBlendingWarning)
        yield
