"""Quality scorers chosen by name, for analysis, calibration and reports on any target.

A *reference* scorer compares each generated sample with the large-only sample of the same call (higher is
better), so calibration can hold a schedule to a tolerance on it:

=====================  ==================================================================================
``psnr``, ``ssim``     per-frame fidelity to the large-only output (torchmetrics)
``temporal``           temporal consistency of the output itself (consecutive frames' similarity)
``feature:dino=PATH``  cosine similarity of per-frame features, DINOv2 / CLIP loaded from a local folder
``feature:clip=PATH``  (``PATH`` may be left out when ``FLOWBLENDING_DINO`` / ``FLOWBLENDING_CLIP`` is set)
``module:function``    your own: ``function(outputs, reference)`` on ``(B, F, C, H, W)`` tensors in [0, 1],
``file.py:function``   returning one score per sample (or one float)
a target's own         e.g. ``classifier`` for the embedded pair (its metrics classifier's features)
=====================  ==================================================================================

A *set* scorer, ``fd:dino=PATH`` / ``fd:clip=PATH``, is the Fréchet distance between the features of all
generated samples and of all large-only ones (lower is better): reported with its sample counts, refused
below two samples, and not a calibration tolerance.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

BUILT_IN = ("psnr", "ssim", "temporal")
EXTRACTOR_KINDS = ("feature", "fd")


@dataclass
class Scorer:
    """``per_sample(outputs, reference) -> (B,)`` on ``(B, F, C, H, W)`` tensors in [0, 1]; higher is better.
    ``extras(outputs, prompts)`` (optional) gives figures of its own per sample, e.g. whether a classifier
    reads the prompted digit (``{"digit_accuracy": (B,) bool}``): reports show a bool figure as a proportion
    with its Wilson interval, any other as a mean with its normal one (``metrics.intervals.interval_of``).
    Per sample, so the figures of calls made apart (other ranks, other runs) add up."""

    name: str
    per_sample: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    extras: Callable[[torch.Tensor, list], dict[str, torch.Tensor]] | None = None


@dataclass
class SetScorer:
    """A distance between whole sets (lower is better), e.g. a Fréchet distance: ``features(outputs) ->
    (B, D)`` per sample (so calls made apart add up), ``distance(features, reference_features) -> float``."""

    name: str
    features: Callable[[torch.Tensor], torch.Tensor]
    distance: Callable[[torch.Tensor, torch.Tensor], float]
    minimum_samples: int = 2

    def value(self, outputs: torch.Tensor, reference: torch.Tensor) -> float:
        return self.distance(self.features(outputs), self.features(reference))


def as_video(output: Any) -> torch.Tensor:
    """A pipeline's ``np`` output as ``(B, F, C, H, W)`` float in [0, 1]: videos ``(B, F, H, W, C)``, images
    ``(B, H, W, C)`` (one frame each), or PIL images."""
    if isinstance(output, list) and output and hasattr(output[0], "convert"):
        output = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in output])
    video = torch.as_tensor(np.asarray(output) if not isinstance(output, torch.Tensor) else output).float()
    if video.dim() == 4:
        video = video[:, None]
    if video.dim() != 5:
        raise ValueError(
            f"expected frames (B, F, H, W, C) or images (B, H, W, C), got shape {tuple(video.shape)}."
        )
    return video.permute(0, 1, 4, 2, 3)


def is_set_scorer(name: str) -> bool:
    """Whether scorer ``name`` scores whole sets (a Fréchet distance) rather than each sample."""
    return name.partition(":")[0] == "fd"


def check_scorer_names(names: list[str], offered: dict[str, Callable]) -> None:
    """Refuse an unknown scorer (or a missing feature folder) before any work."""
    for name in names:
        kind, _, rest = name.partition(":")
        if name in BUILT_IN or name in offered:
            continue
        if kind in EXTRACTOR_KINDS:
            extractor, _, folder = rest.partition("=")
            _check_extractor(name, extractor, folder)
            continue
        if ":" in name:
            _user_function(name)
            continue
        known = ", ".join([*BUILT_IN, *offered, "feature:dino=PATH", "fd:dino=PATH", "module:function"])
        raise ValueError(f"scorer {name!r} is unknown; choose from {known}.")


def build_scorers(names: list[str], offered: dict[str, Callable]) -> tuple[list[Scorer], list[SetScorer]]:
    """The scorers ``names`` ask for (``offered``: the target's own, built on demand)."""
    check_scorer_names(names, offered)
    reference, sets = [], []
    for name in names:
        kind, _, rest = name.partition(":")
        if name in offered:
            reference.append(offered[name]())
        elif name in BUILT_IN:
            reference.append(Scorer(name, _BUILT_IN[name]))
        elif kind in EXTRACTOR_KINDS:
            extractor_name, _, folder = rest.partition("=")
            extractor = _load_extractor(extractor_name, folder)
            if not is_set_scorer(name):
                reference.append(Scorer(name, _feature_similarity(extractor)))
            else:
                sets.append(SetScorer(name, _flat_features(extractor), _frechet))
        else:
            reference.append(Scorer(name, _per_sample(_user_function(name))))
    return reference, sets


def _psnr(outputs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    from .quality import psnr

    return psnr(outputs.transpose(1, 2), reference.transpose(1, 2))


def _ssim(outputs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    from .quality import ssim

    return ssim(outputs.transpose(1, 2), reference.transpose(1, 2))


def _temporal(outputs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    from .quality import temporal_consistency

    if outputs.shape[1] < 2:
        raise ValueError("the temporal scorer needs videos (two or more frames); these outputs are images.")
    return temporal_consistency(outputs.transpose(1, 2))


_BUILT_IN = {"psnr": _psnr, "ssim": _ssim, "temporal": _temporal}


def _check_extractor(name: str, extractor: str, folder: str) -> None:
    from .features import known_extractors

    if extractor not in known_extractors():
        raise ValueError(
            f"scorer {name!r}: feature extractor {extractor!r} is unknown; use "
            f"{', '.join(known_extractors())}."
        )
    if folder and not Path(folder).is_dir():
        raise ValueError(f"scorer {name!r}: {folder} is not a folder holding the {extractor} weights.")


def _load_extractor(extractor: str, folder: str):
    from .features import ExtractorUnavailable, load_extractor

    try:
        return load_extractor(extractor, folder or None)
    except ExtractorUnavailable as error:
        raise ValueError(f"scorer {extractor}: {error}") from error


def _feature_similarity(extractor) -> Callable:
    def score(outputs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        from .quality import feature_similarity

        return feature_similarity(outputs.transpose(1, 2), reference.transpose(1, 2), extractor)

    return score


def _flat_features(extractor) -> Callable:
    """Each sample's per-frame features, one row per sample (what a Fréchet distance over videos compares)."""

    def features(video: torch.Tensor) -> torch.Tensor:
        return extractor(video.flatten(0, 1)).reshape(len(video), -1)

    return features


def _frechet(features: torch.Tensor, reference: torch.Tensor) -> float:
    from .quality import frechet_distance

    return frechet_distance(features, reference)


def _user_function(spec: str) -> Callable:
    """``package.module:function`` or ``path/to/file.py:function``: found (not yet called) or refused."""
    location, _, attribute = spec.rpartition(":")
    if location.endswith(".py"):
        path = Path(location)
        if not path.is_file():
            raise ValueError(f"scorer {spec!r}: {path} is not a file.")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules.setdefault(path.stem, module)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as error:
            raise ValueError(f"scorer {spec!r}: cannot import {location} ({error}).") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ValueError(f"scorer {spec!r}: {location} has no function {attribute!r}.")
    return function


def _per_sample(function: Callable) -> Callable:
    def score(outputs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        value = function(outputs, reference)
        value = torch.as_tensor(value, dtype=torch.float64)
        return value.expand(len(outputs)) if value.dim() == 0 else value.reshape(len(outputs))

    return score
