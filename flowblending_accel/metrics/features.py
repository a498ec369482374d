"""Pluggable per-frame feature extractors (DINOv2, CLIP) for feature similarity and Fréchet distances.

Real checkpoints are never downloaded here: an extractor loads from a local folder (argument, or the
``FLOWBLENDING_DINO`` / ``FLOWBLENDING_CLIP`` environment variable) with ``local_files_only=True``. When
transformers or the weights are missing, :func:`load_extractor` raises :class:`ExtractorUnavailable` with
the reason, and :func:`available_extractors` lists only what loads, so callers skip cleanly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758)


class ExtractorUnavailable(RuntimeError):
    """The extractor's library or local weights are not present on this machine."""


@dataclass
class FeatureExtractor:
    """``extractor(frames)``: frames ``(N, C, H, W)`` in [0, 1] -> features ``(N, D)``."""

    name: str
    model: torch.nn.Module
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pool: Callable[[object], torch.Tensor]

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.shape[1] == 1:
            frames = frames.expand(-1, 3, -1, -1)
        pixels = F.interpolate(
            frames.float(), size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        parameter = next(self.model.parameters())
        inputs = ((pixels - mean) / std).to(parameter.device, parameter.dtype)
        return self.pool(self.model(pixel_values=inputs)).float().cpu()


def _load_dino(path: str) -> FeatureExtractor:
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(path, local_files_only=True).eval()
    return FeatureExtractor(
        "dino",
        model,
        model.config.image_size,
        IMAGENET_MEAN,
        IMAGENET_STD,
        lambda out: out.last_hidden_state[:, 0],
    )


def _load_clip(path: str) -> FeatureExtractor:
    from transformers import CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection.from_pretrained(path, local_files_only=True).eval()
    return FeatureExtractor(
        "clip", model, model.config.image_size, CLIP_MEAN, CLIP_STD, lambda out: out.image_embeds
    )


_LOADERS: dict[str, tuple[Callable[[str], FeatureExtractor], str]] = {
    "dino": (_load_dino, "FLOWBLENDING_DINO"),
    "clip": (_load_clip, "FLOWBLENDING_CLIP"),
}


def register_extractor(name: str, loader: Callable[[str], FeatureExtractor], env_var: str) -> None:
    """Add an extractor: ``loader(local_path)`` builds it; ``env_var`` names its default local folder."""
    _LOADERS[name] = (loader, env_var)


def known_extractors() -> list[str]:
    """The names of the registered extractors (``dino``, ``clip`` and any added)."""
    return sorted(_LOADERS)


def load_extractor(name: str, path: str | None = None) -> FeatureExtractor:
    if name not in _LOADERS:
        raise ValueError(f"feature extractor {name!r} is unknown; known: {sorted(_LOADERS)}.")
    loader, env_var = _LOADERS[name]
    path = path or os.environ.get(env_var)
    if not path:
        raise ExtractorUnavailable(f"{name}: no local weights; pass a folder or set {env_var}.")
    try:
        return loader(path)
    except ImportError as error:
        raise ExtractorUnavailable(f"{name}: {error}; install flowblending-accel[demo].") from error
    except OSError as error:
        raise ExtractorUnavailable(f"{name}: cannot load local weights from {path}: {error}") from error


def available_extractors() -> dict[str, str]:
    """``{name: "ok" or the reason it is unavailable}`` for every registered extractor."""
    status = {}
    for name in _LOADERS:
        try:
            load_extractor(name)
            status[name] = "ok"
        except ExtractorUnavailable as error:
            status[name] = str(error)
    return status
