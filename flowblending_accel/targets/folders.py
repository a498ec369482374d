"""A target from local diffusers folders (or hub ids): a pipeline and the folder of its small denoiser."""

from __future__ import annotations

from typing import Any

import torch

from ..families import family_for
from .base import Target


def pretrained_target(
    large: str, small: str, device: str, dtype: torch.dtype, prompt: str, steps: int
) -> Target:
    """A local diffusers folder or hub id for the pipeline, and one for the small transformer."""
    from diffusers import DiffusionPipeline
    from diffusers.models import AutoModel

    pipe = DiffusionPipeline.from_pretrained(large, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    family = family_for(pipe)
    denoiser = family.present_denoisers(pipe)[0]
    small_model = AutoModel.from_pretrained(small, subfolder=denoiser, dtype=dtype).to(device).eval()

    def call_kwargs(seed: int) -> dict[str, Any]:
        return dict(
            prompt=prompt,
            num_inference_steps=steps,
            output_type="np",
            generator=torch.Generator(device).manual_seed(seed),
        )

    return Target(
        f"{large} + {small}",
        pipe,
        small_model,
        call_kwargs,
        family.output_field,
        True,
        device,
        f"{large} / {small}, {steps} steps",
    )
