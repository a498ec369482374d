"""Stable Diffusion 1.5 with the BK-SDM small UNet (same latent space and text width) and DeepCache on both
UNets; DeepCache's cached deep features are dropped whenever a UNet starts a segment.

    python integrations/recipes/sd15_bksdm_deepcache.py --prompt "A red cat on the moon" --baseline

Memory, from the public parameter counts in fp16 (estimates, not measured here): the SD 1.5 UNet ~1.7 GB,
BK-SDM-Small's UNet ~1.0 GB, the CLIP text encoder ~0.25 GB, the VAE ~0.17 GB; ~3.1 GB resident. --offload
model|group|sequential loads on the CPU and puts the pipeline on the GPU in that mode (the small UNet follows,
or, under group offloading, is prefetched whole before its stage).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import Defaults, load_denoiser, load_pipeline, parser, run, script  # noqa: E402

from flowblending_accel.accelerators import DeepCache  # noqa: E402

DEFAULTS = Defaults(
    "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "nota-ai/bk-sdm-small",
    height=512,
    width=512,
    frames=None,
    steps=50,
    guidance=7.5,
    stack=("deepcache:3",),
    output="flowblending.png",
    context_parallel=False,  # UNets have no context-parallel plan in diffusers
)


def load(
    large=DEFAULTS.large,
    small=DEFAULTS.small,
    device="cuda",
    dtype=torch.float16,
    offload="none",
    **components,
):
    """The pipeline and the small model, loaded on the CPU, then on ``device`` in memory mode ``offload``;
    returns them and the stack members the mode asks for."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    components.setdefault("safety_checker", None)
    pipe, members = load_pipeline(StableDiffusionPipeline, large, device, dtype, offload, **components)
    return pipe, load_denoiser(UNet2DConditionModel, small, "unet", dtype, device, offload), members


def build(
    large=DEFAULTS.large,
    small=DEFAULTS.small,
    schedule=DEFAULTS.schedule,
    cache_interval=3,
    device="cuda",
    dtype=torch.float16,
    stack=None,
    offload="none",
    **components,
):
    from flowblending_accel import (  # imports diffusers: after the user's errors
        FlowBlendingConfig,
        apply_flowblending_,
    )

    pipe, small_unet, members = load(large, small, device, dtype, offload, **components)
    chosen = [DeepCache(interval=cache_interval)] if stack is None else list(stack)
    router = apply_flowblending_(
        pipe, small_unet, FlowBlendingConfig(schedule, accelerators=[*members, *chosen])
    )
    return pipe, router


def main(argv=None):
    p = parser(__doc__, DEFAULTS)
    p.set_defaults(dtype="float16")
    return run(p.parse_args(argv), load, DEFAULTS)


if __name__ == "__main__":
    sys.exit(script(main))
