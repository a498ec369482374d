"""Per-frame fidelity (PSNR, SSIM) against a reference video, temporal consistency, feature similarity and
the Fréchet distance between two sets of features.

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
    """Per-clip PSNR in dB, averaged over frames (each frame's PSNR capped at 100 dB for identical frames)."""
    a, b = as_frames(video, layout), as_frames(reference, layout)
    mse = (a - b).pow(2).flatten(2).mean(-1)  # (B, F)
    frame_psnr = 10 * torch.log10(data_range**2 / mse.clamp_min(1e-10))
    return frame_psnr.clamp(max=100.0).mean(-1)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(video, reference, data_range: float = 1.0, layout: str = "BCFHW", window: int = 7) -> torch.Tensor:
    """Per-clip SSIM (Wang et al. 2004, Gaussian window, K1=0.01, K2=0.03), averaged over frames and
    channels."""
    a, b = as_frames(video, layout), as_frames(reference, layout)
    batch, frames, channels, h, w = a.shape
    size = min(window, h, w) | 1
    kernel = _gaussian_window(size, 1.5 * size / 7)
    a, b = a.reshape(-1, 1, h, w), b.reshape(-1, 1, h, w)
    blur = lambda x: F.conv2d(x, kernel)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    score = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return score.flatten(1).mean(-1).reshape(batch, frames * channels).mean(-1)


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
    """Fréchet distance between Gaussians fitted to two feature sets ``(N, D)`` (FID / FVD formula)."""
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
