"""Turn a training checkpoint into the shipped diffusers folder: a WanPipeline (large transformer, text
encoder, tokenizer, pixel-shuffle VAE, scheduler), the small transformer beside it, and the classifier.

    flowblending-accel export-demo runs/demo-train/checkpoint.pt flowblending_accel/assets/demo_pair \
        --classifier runs/classifier
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from .models import CLASSIFIER_SUBFOLDER, SHIFT, SMALL_SUBFOLDER, build_large, build_small, build_vae
from .text import build_text_encoder, build_tokenizer


def load_checkpoint_modules(checkpoint: Path, use_ema: bool = True) -> dict[str, torch.nn.Module]:
    """Large, small and text encoder with the checkpoint's (EMA) weights."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    builders = recipe_of(state).builders()
    modules = {
        "large": build_large(**builders["large"]),
        "small": build_small(**builders["small"]),
        "text_encoder": build_text_encoder(),
    }
    for name, module in modules.items():
        weights = dict(state["models"][name])
        if use_ema:
            weights.update(state["ema"][name])
        module.load_state_dict(weights)
        module.eval()
    return modules


def recipe_of(state: dict):
    """The training config a checkpoint was made with (fields added since default to the shipped recipe)."""
    from .train import TrainConfig

    known = {k: v for k, v in state["config"].items() if k in TrainConfig.__dataclass_fields__}
    if "pixel_norm" in known:
        known["pixel_norm"] = tuple(known["pixel_norm"])
    return TrainConfig(**known)


def export_pair(checkpoint: Path, folder: Path, classifier: Path | None = None, use_ema: bool = True) -> Path:
    """Write the pipeline folder atomically (a temporary sibling, then a rename)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    modules = load_checkpoint_modules(checkpoint, use_ema)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    pipe = WanPipeline(
        tokenizer=build_tokenizer(),
        text_encoder=modules["text_encoder"],
        vae=build_vae(**recipe_of(state).builders()["vae"]),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT),
        transformer=modules["large"],
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=folder.parent))
    try:
        pipe.save_pretrained(staging)
        modules["small"].save_pretrained(staging / SMALL_SUBFOLDER)
        if classifier is not None:
            shutil.copytree(classifier, staging / CLASSIFIER_SUBFOLDER)
        if folder.exists():
            for keep in ("README.md",):  # the model card is written separately, after evaluation
                if (folder / keep).exists():
                    shutil.copy2(folder / keep, staging / keep)
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return folder
