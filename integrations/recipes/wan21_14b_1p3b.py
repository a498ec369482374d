"""Wan 2.1 T2V 14B + 1.3B: the paper's Wan pair, large early and late, small in the middle (L40-S40-L20).

    python integrations/recipes/wan21_14b_1p3b.py --prompt "A teddy bear washing the dishes" \
        --stack dpm++:25 fbc:0.05 compile
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import parser, report  # noqa: E402

from flowblending_accel.accelerators import apply_stack  # noqa: E402

PIPELINE, SMALL = "Wan-AI/Wan2.1-T2V-14B-Diffusers", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"


def build(
    pipeline=PIPELINE,
    small=SMALL,
    schedule="L40-S40-L20",
    stack=(),
    device="cuda",
    dtype=torch.bfloat16,
    small_guidance="on",
    **components,
):
    from diffusers import WanPipeline, WanTransformer3DModel

    pipe = WanPipeline.from_pretrained(pipeline, dtype=dtype, **components).to(device)
    small_model = WanTransformer3DModel.from_pretrained(small, subfolder="transformer", dtype=dtype).to(
        device
    )
    router, _ = apply_stack(pipe, small_model, schedule, list(stack), small_guidance=small_guidance)
    return pipe, router


def main(argv=None) -> None:
    p = parser(__doc__, PIPELINE, SMALL)
    p.add_argument(
        "--small-guidance",
        choices=("on", "off"),
        default="on",
        help="off: guidance-free small stage, for a step- or guidance-distilled small model (LDL)",
    )
    args = p.parse_args(argv)
    pipe, _ = build(
        args.pipeline,
        args.small,
        args.schedule,
        args.stack,
        args.device,
        getattr(torch, args.dtype),
        small_guidance=args.small_guidance,
    )
    video = pipe(
        args.prompt, height=480, width=832, num_frames=61, num_inference_steps=args.steps, guidance_scale=5.0
    ).frames[0]
    from diffusers.utils import export_to_video

    export_to_video(video, args.output, fps=16)
    report(pipe)


if __name__ == "__main__":
    main()
