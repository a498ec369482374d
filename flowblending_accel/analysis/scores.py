"""Quality scores as calibration uses them: a quality function returns one float or named scores (higher is
better), and a tolerance is a minimum per score.

The tools score each pipeline call on its own (on the rank that made it, journalled with it) and combine the
calls' scores afterwards: :class:`SampleQuality` scores each sample of a call against the large-only sample
of the same noise and averages every sample of every call, in call order, so the combined score is the same
however the calls were spread over ranks or runs. A quality function of one's own, ``quality(outputs,
reference) -> float | Scores`` on lists of outputs, is held as :class:`ListQuality` (in memory: no journal).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..core.schedule import FlowBlendingWarning
from ..metrics.scorers import Scorer, as_video

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


class SampleQuality:
    """Per-sample scorers as a quality function: a call's outputs are prepared as ``(B, F, C, H, W)`` videos
    in [0, 1] (:func:`~flowblending_accel.metrics.scorers.as_video`), scored per sample (JSON lists), and the
    scores of every call combined as the mean over all samples (float64)."""

    def __init__(self, scorers: list[Scorer]) -> None:
        self.scorers = scorers

    @property
    def key(self) -> list[str]:
        """What a journalled score depends on: the scorers' names."""
        return [scorer.name for scorer in self.scorers]

    def prepare(self, output: Any) -> torch.Tensor:
        return as_video(output)

    def of_call(self, output: torch.Tensor, reference: torch.Tensor) -> dict[str, list[float]]:
        return {s.name: s.per_sample(output, reference).reshape(-1).tolist() for s in self.scorers}

    def samples(self, per_call: list[dict[str, list[float]]]) -> dict[str, torch.Tensor]:
        """Every sample's score per scorer, in call order."""
        names = per_call[0] if per_call else self.key
        return {
            name: torch.tensor([v for call in per_call for v in call[name]], dtype=torch.float64)
            for name in names
        }

    def combine(self, per_call: list[dict[str, list[float]]]) -> Scores:
        return {name: float(values.mean()) for name, values in self.samples(per_call).items()}

    def __call__(self, outputs: list, reference: list) -> Scores:
        """The list form: ``quality(outputs, reference)`` on whole lists of pipeline outputs."""
        pairs = zip(outputs, reference, strict=True)
        return self.combine([self.of_call(self.prepare(o), self.prepare(r)) for o, r in pairs])


class ListQuality:
    """A quality function of one's own on whole lists of outputs (as the pipeline gave them): calls are kept
    in memory and scored together, so it runs without a journal (a library call)."""

    key = None

    def __init__(self, function: Callable[[list, list], float | Scores]) -> None:
        self.function = function

    def prepare(self, output: Any) -> Any:
        return output

    def of_call(self, output: Any, reference: Any) -> dict[str, Any]:
        return {"output": output, "reference": reference}

    def combine(self, per_call: list[dict[str, Any]]) -> Scores:
        return as_scores(self.function([c["output"] for c in per_call], [c["reference"] for c in per_call]))


def as_quality(quality: Any) -> SampleQuality | ListQuality:
    return quality if isinstance(quality, SampleQuality | ListQuality) else ListQuality(quality)
