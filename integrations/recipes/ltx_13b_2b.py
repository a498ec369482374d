"""LTX-Video 13B + 2B (same 128-channel latent space and caption width), or with --distilled a step-distilled
2B in the small slot: the paper's LDL. LTX batches CFG into one call per step, so each step is one call.

Lightricks publishes its step-distilled 2B as a single-file checkpoint, not a diffusers folder: convert it
once (``LTXVideoTransformer3DModel.from_single_file(path).save_pretrained(folder + "/transformer")``) and pass
the folder with ``--distilled FOLDER``. The small stage still receives the pipeline's CFG batch: LTX batches
both CFG branches into one call, and the router's guidance-free small stage (``small_guidance="off"``) works
only for pipelines with one call per branch (Wan).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import parser, report  # noqa: E402

from flowblending_accel.accelerators import apply_stack  # noqa: E402

PIPELINE, SMALL = "Lightricks/LTX-Video-0.9.7-dev", "Lightricks/LTX-Video-0.9.5"


def build(
    pipeline=PIPELINE,
    small=SMALL,
    schedule="L40-S40-L20",
    stack=(),
    device="cuda",
    dtype=torch.bfloat16,
    **components,
):
    from diffusers import LTXPipeline, LTXVideoTransformer3DModel

    pipe = LTXPipeline.from_pretrained(pipeline, dtype=dtype, **components).to(device)
    small_model = LTXVideoTransformer3DModel.from_pretrained(small, subfolder="transformer", dtype=dtype).to(
        device
    )
    router, _ = apply_stack(pipe, small_model, schedule, list(stack))
    return pipe, router


def main(argv=None) -> None:
    p = parser(__doc__, PIPELINE, SMALL)
    p.add_argument(
        "--distilled",
        metavar="FOLDER",
        default=None,
        help="a step-distilled 2B converted to a diffusers folder (with a transformer/ subfolder) for the "
        "small slot: the paper's LDL",
    )
    args = p.parse_args(argv)
    small = args.distilled or args.small
    pipe, _ = build(args.pipeline, small, args.schedule, args.stack, args.device, getattr(torch, args.dtype))
    video = pipe(args.prompt, height=352, width=608, num_frames=61, num_inference_steps=args.steps).frames[0]
    from diffusers.utils import export_to_video

    export_to_video(video, args.output, fps=30)
    report(pipe)


if __name__ == "__main__":
    main()
