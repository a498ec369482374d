"""Per-frame fidelity (PSNR, SSIM: torchmetrics) against a reference video, temporal consistency, feature
similarity and the Fréchet distance between two sets of features.

Videos are tensors ``(B, C, F, H, W)`` (diffusers' latent / decoded layout) or ``(B, F, H, W, C)`` numpy
frames as ``pipe(...).frames`` returns them; pass ``layout="BFHWC"`` for the latter. Pixel values live in
``[0, data_range]`` or ``[-1, 1]`` (then ``data_range=2``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F


def as_frames(video, layout: str = "BCFHW") -> torch.Tensor:
    """``(B, F, C, H, W)`` float tensor from either supported layout."""
    video = torch.as_tensor(np.asarray(video) if not isinstance(video, torch.Tensor) else video).float()
    if video.dim() != 5:
        raise ValueError(f"a video batch has 5 dimensions, got shape {tuple(video.shape)}.")
    if layout == "BCFHW":
        return video.permute(0, 2, 1, 3, 4)
    if layout == "BFHWC":
        return video.permute(0, 1, 4, 2, 3)
    raise ValueError(f"layout={layout!r} must be 'BCFHW' or 'BFHWC'.")


def psnr(video, reference, data_range: float = 1.0, layout: str = "BCFHW") -> torch.Tensor:
    """Per-clip PSNR in dB, the mean of each frame's (torchmetrics; identical frames capped at 100 dB)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    a, b = _frames_pair(video, reference, layout)
    batch, count = a.shape[:2]
    frame = peak_signal_noise_ratio(
        a.flatten(0, 1), b.flatten(0, 1), data_range=data_range, reduction="none", dim=(1, 2, 3)
    )
    return frame.clamp(max=100.0).reshape(batch, count).mean(-1)


def ssim(video, reference, data_range: float = 1.0, layout: str = "BCFHW") -> torch.Tensor:
    """Per-clip SSIM, the mean of each frame's (torchmetrics: Wang et al. 2004, 11x11 Gaussian window,
    sigma 1.5, K1 0.01, K2 0.03; frames under 11 px get the widest Gaussian that fits)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, b = _frames_pair(video, reference, layout)
    batch, count = a.shape[:2]
    side = min(a.shape[-2:])
    sigma = 1.5 if side >= 11 else max((side - 1) / 7, 0.3)  # torchmetrics sizes the window 7 sigma wide
    frame = structural_similarity_index_measure(
        a.flatten(0, 1), b.flatten(0, 1), sigma=sigma, data_range=data_range, reduction="none"
    )
    return frame.reshape(batch, count).mean(-1)


def _frames_pair(video, reference, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        import torchmetrics  # noqa: F401
    except ImportError as error:
        raise ValueError("PSNR and SSIM use torchmetrics: pip install flowblending-accel[demo].") from error
    return as_frames(video, layout), as_frames(reference, layout)


def temporal_consistency(video, layout: str = "BCFHW", extractor: Callable | None = None) -> torch.Tensor:
    """Per-clip mean cosine similarity between consecutive frames' features (pixels when no extractor).

    1.0 is a still, steady video; flicker, popping strokes and identity changes lower it. Compare it between
    schedules on the same prompts: motion itself lowers it equally for all of them.
    """
    frames = as_frames(video, layout)
    batch, count = frames.shape[:2]
    flat = frames.reshape(batch * count, *frames.shape[2:])
    features = (
        extractor(flat) if extractor is not None else flat.flatten(1) - flat.flatten(1).mean(-1, keepdim=True)
    )
    features = F.normalize(features.reshape(batch, count, -1), dim=-1)
    return (features[:, 1:] * features[:, :-1]).sum(-1).mean(-1)


def feature_similarity(video, reference, extractor: Callable, layout: str = "BCFHW") -> torch.Tensor:
    """Per-clip mean cosine similarity of per-frame features (e.g. DINO) between a video and its reference."""
    a, b = as_frames(video, layout), as_frames(reference, layout)
    batch, count = a.shape[:2]
    fa = extractor(a.reshape(batch * count, *a.shape[2:]))
    fb = extractor(b.reshape(batch * count, *b.shape[2:]))
    return F.cosine_similarity(fa, fb, dim=-1).reshape(batch, count).mean(-1)


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(N, D)`` (FID / FVD formula).

    Ours, not torchmetrics': its Fréchet metrics compute their own features (InceptionV3 weights downloaded
    at first use), where this one takes features already computed by any extractor (DINO, CLIP, the demo
    classifier) and needs no download. Report it with the sample counts: it depends on them."""
    a, b = torch.as_tensor(features_a).double(), torch.as_tensor(features_b).double()
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("a Fréchet distance needs at least two samples per set.")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = (
        torch.cov(a.T).reshape(a.shape[1], a.shape[1]),
        torch.cov(b.T).reshape(b.shape[1], b.shape[1]),
    )
    root_a = _sqrt_psd(cov_a)
    # Tr((cov_a cov_b)^1/2) = Tr((root_a cov_b root_a)^1/2), the latter symmetric PSD: use eigenvalues.
    middle = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * middle)


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T
