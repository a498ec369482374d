"""Metrics: quality against the same-seed large-only output, feature extractors, FLOPs and cache-hit
accounting."""

from .features import FeatureExtractor, available_extractors, load_extractor, register_extractor
from .quality import (
    feature_similarity,
    frechet_distance,
    psnr,
    ssim,
    temporal_consistency,
)

__all__ = [
    "FeatureExtractor",
    "available_extractors",
    "feature_similarity",
    "frechet_distance",
    "load_extractor",
    "psnr",
    "register_extractor",
    "ssim",
    "temporal_consistency",
]
