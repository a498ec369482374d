"""Moving-digit videos: a procedurally generated, offline text-to-video dataset, deterministic per seed.

Each clip is one handwritten digit (the UCI / scikit-learn 8x8 digits, shipped in ``assets/digits.npz`` and
upscaled to 16x16) crossing a 32x32 canvas in 9 grayscale frames at 2 px per frame, in one of four
directions, prompted as ``"a 7 moving left"``. The three stages of a sampler each have something to get
right: *which* digit (structure), a steady straight motion (temporal coherence), and the stroke shape
(detail). Bitmaps are split by index into train (4/5) and held-out test (1/5) writers' digits.

The generated clips cross the canvas along its centre line (``placement="centre"``), so the prompt fixes
everything but the writer's hand. Letting the start position vary as well (``"anywhere"``) blurs what a
prompt means at high noise: the mean clip of a prompt, which is what a denoiser predicts from pure noise,
shows its digit to the metrics classifier 30 % of the time instead of 90 %, and a model trained that way
picks its digit from its own early samples rather than from the prompt (see the demo pair's model card).
The metrics classifier still trains on ``"anywhere"`` clips, so it reads a digit wherever it is drawn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

DIRECTIONS = ("left", "right", "up", "down")
FRAMES = 9
CANVAS = 32
DIGIT_SIZE = 16
SPEED = 2  # pixels per frame: (FRAMES - 1) * SPEED + DIGIT_SIZE == CANVAS, so a digit crosses edge to edge
PLACEMENTS = ("centre", "anywhere")  # where a clip's path lies across its direction of motion
_PROMPT = re.compile(r"^\s*an?\s+(\d)\s+moving\s+(left|right|up|down)\s*$")


def prompt_for(digit: int, direction: str) -> str:
    return f"a {digit} moving {direction}"


def parse_prompt(prompt: str) -> tuple[int, str]:
    """``"a 7 moving left"`` -> ``(7, "left")``; anything else is a clear error."""
    match = _PROMPT.match(prompt.lower())
    if not match:
        raise ValueError(
            f"prompt {prompt!r} is not in the demo's language: write 'a <digit> moving <left|right|up|down>'."
        )
    return int(match.group(1)), match.group(2)


def all_prompts() -> list[str]:
    return [prompt_for(digit, direction) for digit in range(10) for direction in DIRECTIONS]


@dataclass(frozen=True)
class DigitBitmaps:
    images: torch.Tensor  # (N, 8, 8) in [0, 1]
    labels: torch.Tensor  # (N,)

    def indices_of(self, digit: int) -> torch.Tensor:
        return (self.labels == digit).nonzero().flatten()


def load_bitmaps(split: str = "train") -> DigitBitmaps:
    """The shipped digit bitmaps; ``split`` is ``"train"``, ``"test"`` (every fifth) or ``"all"``."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split={split!r} must be 'train', 'test' or 'all'.")
    with resources.files("flowblending_accel.assets").joinpath("digits.npz").open("rb") as handle:
        data = np.load(handle)
        images, labels = data["images"].astype(np.float32) / 16.0, data["labels"].astype(np.int64)
    index = np.arange(len(labels))
    keep = {"train": index % 5 != 0, "test": index % 5 == 0, "all": np.ones_like(index, bool)}[split]
    return DigitBitmaps(torch.from_numpy(images[keep]), torch.from_numpy(labels[keep]))


def render(bitmaps: torch.Tensor, directions: list[str], offsets: torch.Tensor) -> torch.Tensor:
    """Clips ``(B, 1, FRAMES, CANVAS, CANVAS)`` in [-1, 1] from bitmaps ``(B, 8, 8)`` in [0, 1].

    ``offsets`` (B,) in [0, CANVAS - DIGIT_SIZE] place the digit across the direction of motion.
    """
    glyphs = F.interpolate(
        bitmaps[:, None], size=(DIGIT_SIZE, DIGIT_SIZE), mode="bilinear", align_corners=False
    )
    glyphs = glyphs[:, 0].clamp(0, 1)
    clips = torch.zeros(len(bitmaps), FRAMES, CANVAS, CANVAS)
    travel = CANVAS - DIGIT_SIZE
    for b, (direction, offset) in enumerate(zip(directions, offsets.tolist(), strict=True)):
        for frame in range(FRAMES):
            along = frame * SPEED if direction in ("right", "down") else travel - frame * SPEED
            row, col = (offset, along) if direction in ("left", "right") else (along, offset)
            clips[b, frame, row : row + DIGIT_SIZE, col : col + DIGIT_SIZE] = glyphs[b]
    return (clips * 2 - 1)[:, None]


@dataclass
class Batch:
    clips: torch.Tensor  # (B, 1, FRAMES, CANVAS, CANVAS)
    prompts: list[str]
    digits: torch.Tensor
    directions: torch.Tensor  # index into DIRECTIONS


def _offsets(count: int, generator: torch.Generator, placement: str) -> torch.Tensor:
    """Where each path lies across its direction of motion. The random offsets are drawn for either
    placement, so both consume ``generator`` alike and differ only in position."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement={placement!r} must be one of {PLACEMENTS}.")
    offsets = torch.randint(CANVAS - DIGIT_SIZE + 1, (count,), generator=generator)
    return offsets if placement == "anywhere" else torch.full_like(offsets, (CANVAS - DIGIT_SIZE) // 2)


def sample_batch(
    bitmaps: DigitBitmaps, batch_size: int, generator: torch.Generator, placement: str = "centre"
) -> Batch:
    """A random batch: uniform digit bitmap and direction (and offset, ``"anywhere"``), from ``generator``."""
    picks = torch.randint(len(bitmaps.labels), (batch_size,), generator=generator)
    direction_ids = torch.randint(len(DIRECTIONS), (batch_size,), generator=generator)
    offsets = _offsets(batch_size, generator, placement)
    directions = [DIRECTIONS[i] for i in direction_ids.tolist()]
    digits = bitmaps.labels[picks]
    return Batch(
        clips=render(bitmaps.images[picks], directions, offsets),
        prompts=[prompt_for(d, s) for d, s in zip(digits.tolist(), directions, strict=True)],
        digits=digits,
        directions=direction_ids,
    )


def reference_clips(prompts: list[str], seed: int, split: str = "test") -> Batch:
    """Real clips for ``prompts`` (one each), drawn deterministically from ``split``'s bitmaps."""
    bitmaps = load_bitmaps(split)
    generator = torch.Generator().manual_seed(seed)
    parsed = [parse_prompt(p) for p in prompts]
    picks = []
    for digit, _ in parsed:
        candidates = bitmaps.indices_of(digit)
        picks.append(int(candidates[torch.randint(len(candidates), (1,), generator=generator)]))
    offsets = _offsets(len(prompts), generator, "centre")
    directions = [direction for _, direction in parsed]
    return Batch(
        clips=render(bitmaps.images[picks], directions, offsets),
        prompts=list(prompts),
        digits=torch.tensor([digit for digit, _ in parsed]),
        directions=torch.tensor([DIRECTIONS.index(d) for d in directions]),
    )
