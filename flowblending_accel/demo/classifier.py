"""A small video classifier for the demo's semantic metrics: which digit, which direction, and a feature
vector for a Fréchet distance between generated and real clips.

Trained on real clips of the *train* writers only (light pixel-noise augmentation, so a clean but slightly
noisy sample is not misread); its held-out accuracy on the *test* writers is recorded in the model card.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .data import DIRECTIONS, load_bitmaps, sample_batch

FEATURE_DIM = 64


class ClipClassifier(nn.Module):
    """(B, 1, 9, 32, 32) clips in [-1, 1] -> digit logits (10), direction logits (4), features (64)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(1, 16, 3, stride=(1, 2, 2), padding=1),
            nn.GELU(),  # 9 x 16 x 16
            nn.Conv3d(16, 32, 3, stride=(1, 2, 2), padding=1),
            nn.GELU(),  # 9 x 8 x 8
            nn.Conv3d(32, 48, 3, stride=(2, 2, 2), padding=1),
            nn.GELU(),  # 5 x 4 x 4
            nn.Conv3d(48, FEATURE_DIM, 3, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
        )
        self.digit_head = nn.Linear(FEATURE_DIM, 10)
        self.direction_head = nn.Linear(FEATURE_DIM, len(DIRECTIONS))

    def forward(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.body(clips)
        return self.digit_head(features), self.direction_head(features), features


@dataclass
class ClassifierReport:
    steps: int
    final_loss: float
    test_digit_accuracy: float
    test_direction_accuracy: float
    test_clips: int


def train_classifier(
    steps: int = 2000, batch_size: int = 64, seed: int = 0, noise: float = 0.1
) -> tuple[ClipClassifier, ClassifierReport]:
    torch.manual_seed(seed)
    model = ClipClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    bitmaps = load_bitmaps("train")
    generator = torch.Generator().manual_seed(seed)
    loss_value = float("nan")
    for _ in range(steps):
        batch = sample_batch(bitmaps, batch_size, generator, placement="anywhere")
        clips = batch.clips + noise * torch.randn(batch.clips.shape, generator=generator)
        digit_logits, direction_logits, _ = model(clips)
        loss = nn.functional.cross_entropy(digit_logits, batch.digits) + nn.functional.cross_entropy(
            direction_logits, batch.directions
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_value = loss.item()
    model.eval()
    digit_acc, direction_acc, count = evaluate_classifier(model, seed=seed + 1)
    return model, ClassifierReport(steps, loss_value, digit_acc, direction_acc, count)


@torch.no_grad()
def evaluate_classifier(model: ClipClassifier, clips: int = 1000, seed: int = 1) -> tuple[float, float, int]:
    """Accuracy on real clips of the held-out test writers, drawn anywhere on the canvas."""
    batch = sample_batch(
        load_bitmaps("test"), clips, torch.Generator().manual_seed(seed), placement="anywhere"
    )
    digit_logits, direction_logits, _ = model(batch.clips)
    return (
        float((digit_logits.argmax(1) == batch.digits).float().mean()),
        float((direction_logits.argmax(1) == batch.directions).float().mean()),
        clips,
    )


def save_classifier(model: ClipClassifier, report: ClassifierReport, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(folder / "classifier.safetensors"))
    (folder / "classifier.json").write_text(json.dumps(report.__dict__, indent=2) + "\n")


def load_classifier(folder: Path) -> ClipClassifier:
    model = ClipClassifier()
    model.load_state_dict(load_file(str(folder / "classifier.safetensors")))
    return model.eval()
