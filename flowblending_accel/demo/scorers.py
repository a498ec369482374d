"""The embedded pair's own scorer: its metrics classifier, offered by the embedded target as ``classifier``.

Per sample: the cosine similarity of the classifier's features of a clip and of the large-only clip from
the same noise (what the clip shows, blind to fine pixel noise: pair it with ``ssim``). Extras: the share of
clips showing the prompted digit and motion (per clip; reports give the share with its Wilson interval).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..metrics.scorers import Scorer
from .classifier import ClipClassifier, load_classifier
from .models import CLASSIFIER_SUBFOLDER, default_pair_path
from .scoring import hits


class ClassifierScorer(Scorer):
    def __init__(self, classifier: ClipClassifier) -> None:
        self.classifier = classifier
        super().__init__("classifier", self._similarity, self._accuracies)

    @classmethod
    def shipped(cls, pair: str | Path | None = None) -> ClassifierScorer:
        return cls(load_classifier(Path(pair or default_pair_path()) / CLASSIFIER_SUBFOLDER))

    @torch.no_grad()
    def _similarity(self, outputs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        features = self.classifier(outputs.transpose(1, 2) * 2 - 1)[2]
        reference_features = self.classifier(reference.transpose(1, 2) * 2 - 1)[2]
        return F.cosine_similarity(features, reference_features, dim=1)

    @torch.no_grad()
    def _accuracies(self, outputs: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Per clip: whether it shows the prompted digit and motion."""
        found = hits(self.classifier, outputs.transpose(1, 2), prompts)
        found.pop("features")
        return found
