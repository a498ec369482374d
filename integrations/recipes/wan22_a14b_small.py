"""Wan 2.2 T2V A14B (high- and low-noise experts) with a small Wan model routed inside each expert.

The pipeline's own boundary_ratio picks the expert; inside it, the router picks large or small by stage, so
"L40-S40-L20" runs the small model in the middle of the trajectory whichever expert owns those steps. Wan 2.1
1.3B shares Wan 2.2 A14B's 16-channel latent space, patch size and umT5 text width.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import parser, report  # noqa: E402

from flowblending_accel import apply_flowblending_  # noqa: E402

PIPELINE, SMALL = "Wan-AI/Wan2.2-T2V-A14B-Diffusers", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"


def build(
    pipeline=PIPELINE, small=SMALL, schedule="L40-S40-L20", device="cuda", dtype=torch.bfloat16, **components
):
    from diffusers import WanPipeline, WanTransformer3DModel

    pipe = WanPipeline.from_pretrained(pipeline, dtype=dtype, **components).to(device)
    small_model = WanTransformer3DModel.from_pretrained(small, subfolder="transformer", dtype=dtype).to(
        device
    )
    router = apply_flowblending_(pipe, small_model, schedule, denoisers=("transformer", "transformer_2"))
    return pipe, router


def main(argv=None) -> None:
    args = parser(__doc__, PIPELINE, SMALL).parse_args(argv)
    pipe, _ = build(args.pipeline, args.small, args.schedule, args.device, getattr(torch, args.dtype))
    video = pipe(args.prompt, height=480, width=832, num_frames=81, num_inference_steps=args.steps).frames[0]
    from diffusers.utils import export_to_video

    export_to_video(video, args.output, fps=16)
    report(pipe)


if __name__ == "__main__":
    main()
