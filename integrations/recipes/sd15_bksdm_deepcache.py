"""Stable Diffusion 1.5 with the BK-SDM small UNet (same latent space and text width) and DeepCache on both
UNets; DeepCache's cached deep features are dropped whenever a UNet starts a segment."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import parser, report  # noqa: E402

from flowblending_accel.accelerators import DeepCache, apply_stack  # noqa: E402

PIPELINE, SMALL = "stable-diffusion-v1-5/stable-diffusion-v1-5", "nota-ai/bk-sdm-small"


def build(
    pipeline=PIPELINE,
    small=SMALL,
    schedule="L40-S40-L20",
    cache_interval=3,
    device="cuda",
    dtype=torch.float16,
    **components,
):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    components.setdefault("safety_checker", None)
    pipe = StableDiffusionPipeline.from_pretrained(pipeline, dtype=dtype, **components).to(device)
    small_unet = UNet2DConditionModel.from_pretrained(small, subfolder="unet", dtype=dtype).to(device)
    router, _ = apply_stack(pipe, small_unet, schedule, [DeepCache(interval=cache_interval)])
    return pipe, router


def main(argv=None) -> None:
    p = parser(__doc__, PIPELINE, SMALL)
    p.set_defaults(dtype="float16", output="flowblending.png", steps=50)
    args = p.parse_args(argv)
    pipe, _ = build(
        args.pipeline, args.small, args.schedule, device=args.device, dtype=getattr(torch, args.dtype)
    )
    pipe(args.prompt, num_inference_steps=args.steps).images[0].save(args.output)
    report(pipe)


if __name__ == "__main__":
    main()
