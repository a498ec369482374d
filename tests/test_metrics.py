"""Each metric on known inputs: identical clips score perfectly, a corrupted clip scores worse."""

import numpy as np
import pytest
import torch

from flowblending_accel.metrics import (
    feature_similarity,
    frechet_distance,
    psnr,
    ssim,
    temporal_consistency,
)
from flowblending_accel.metrics.features import ExtractorUnavailable, available_extractors, load_extractor


@pytest.fixture
def clips():
    generator = torch.Generator().manual_seed(0)
    base = torch.rand(3, 1, 6, 24, 24, generator=generator)
    corrupted = (base + 0.2 * torch.randn(base.shape, generator=generator)).clamp(0, 1)
    return base, corrupted


def test_psnr_ssim_identical_and_corrupted(clips):
    base, corrupted = clips
    assert torch.all(psnr(base, base) == 100.0)
    assert torch.allclose(ssim(base, base), torch.ones(3))
    assert torch.all(psnr(corrupted, base) < 20) and torch.all(ssim(corrupted, base) < 0.9)
    more = (base + 0.4 * torch.randn(base.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert torch.all(psnr(more, base) < psnr(corrupted, base))
    assert torch.all(ssim(more, base) < ssim(corrupted, base))


def test_psnr_known_value():
    a = torch.zeros(1, 1, 2, 4, 4)
    b = torch.full_like(a, 0.1)  # mse 0.01 -> 20 dB at data range 1
    assert psnr(a, b).item() == pytest.approx(20.0, abs=1e-4)


def test_numpy_frames_layout(clips):
    base, _ = clips
    frames = base.permute(0, 2, 3, 4, 1).numpy()  # (B, F, H, W, C) like pipe(...).frames
    assert torch.allclose(psnr(frames, frames, layout="BFHWC"), torch.full((3,), 100.0))
    with pytest.raises(ValueError, match="layout"):
        psnr(base, base, layout="FHW")
    with pytest.raises(ValueError, match="5 dimensions"):
        psnr(np.zeros((2, 3)), np.zeros((2, 3)))


def test_temporal_consistency_still_beats_flicker():
    generator = torch.Generator().manual_seed(0)
    frame = torch.rand(1, 1, 1, 16, 16, generator=generator)
    still = frame.expand(1, 1, 8, 16, 16)
    flicker = still + 0.5 * torch.randn(still.shape, generator=generator)
    assert temporal_consistency(still).item() == pytest.approx(1.0, abs=1e-5)
    assert temporal_consistency(flicker).item() < 0.9


def test_feature_similarity_with_an_extractor(clips):
    base, corrupted = clips
    extractor = lambda frames: frames.flatten(1)  # noqa: E731
    assert torch.allclose(feature_similarity(base, base, extractor), torch.ones(3))
    assert torch.all(feature_similarity(corrupted, base, extractor) < 1.0)


def test_frechet_distance():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(500, 4, generator=generator)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = a + 3.0
    assert frechet_distance(a, shifted) == pytest.approx(36.0, rel=1e-6)  # |mu shift|^2 = 4 * 9
    wider = torch.randn(500, 4, generator=generator) * 2
    assert frechet_distance(a, wider) > 2.0
    with pytest.raises(ValueError, match="two samples"):
        frechet_distance(a[:1], a)


def test_extractors_skip_cleanly_without_weights(monkeypatch):
    monkeypatch.delenv("FLOWBLENDING_DINO", raising=False)
    monkeypatch.delenv("FLOWBLENDING_CLIP", raising=False)
    status = available_extractors()
    assert "FLOWBLENDING_DINO" in status["dino"] and "FLOWBLENDING_CLIP" in status["clip"]
    with pytest.raises(ExtractorUnavailable, match="cannot load local weights"):
        load_extractor("dino", "/nonexistent/folder")
    with pytest.raises(ValueError, match="unknown"):
        load_extractor("inception")


def test_dino_and_clip_load_from_local_folders(tmp_path, clips):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Config, Dinov2Model

    Dinov2Model(
        Dinov2Config(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=37,
            image_size=28,
            patch_size=14,
        )
    ).save_pretrained(tmp_path / "dino")
    CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
            projection_dim=16,
        )
    ).save_pretrained(tmp_path / "clip")
    base, corrupted = clips
    for name, dim in (("dino", 32), ("clip", 16)):
        extractor = load_extractor(name, str(tmp_path / name))
        assert extractor(base[:, :, 0]).shape == (3, dim)
        similarity = feature_similarity(base, base, extractor)
        assert torch.allclose(similarity, torch.ones(3), atol=1e-5)
