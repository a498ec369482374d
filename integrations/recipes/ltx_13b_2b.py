"""LTX-Video 13B + 2B (same 128-channel latent space and caption width), or with --distilled a step-distilled
2B in the small slot: the paper's LDL. LTX batches CFG into one call per step, so each step is one call.

    python integrations/recipes/ltx_13b_2b.py --prompt "A teddy bear washing the dishes" --baseline

Lightricks publishes its step-distilled 2B as a single-file checkpoint, not a diffusers folder: convert it
once (``LTXVideoTransformer3DModel.from_single_file(path).save_pretrained(folder)``) and pass the folder
with ``--distilled FOLDER``. The small stage still receives the pipeline's CFG batch: LTX batches both CFG
branches into one call, and the router's guidance-free small stage (``small_guidance="off"``) works only for
pipelines with one call per branch (Wan).

Memory, from the public parameter counts in bf16 (estimates, not measured here): the 13B transformer
~26 GB, the 2B ~4 GB, the T5-XXL text encoder ~9.5 GB; all resident ~40 GB plus activations. The
pipeline is loaded on the CPU and put on the GPU in --offload's mode; estimated peaks at 480x704, 121 frames
(benchmarks/results/memory-plan): none 38.7 GiB, model 28.8 GiB, group 5.8 GiB, sequential 4.6 GiB.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import Defaults, load_denoiser, load_pipeline, parser, run, script  # noqa: E402

DEFAULTS = Defaults(
    "Lightricks/LTX-Video-0.9.7-dev",
    "Lightricks/LTX-Video-0.9.5",
    height=352,
    width=608,
    frames=61,
    steps=50,
    guidance=3.0,
    fps=24,
)


def load(
    large=DEFAULTS.large,
    small=DEFAULTS.small,
    device="cuda",
    dtype=torch.bfloat16,
    offload="none",
    **components,
):
    """The pipeline and the small model, loaded on the CPU, then on ``device`` in memory mode ``offload``;
    returns them and the stack members the mode asks for."""
    from diffusers import LTXPipeline, LTXVideoTransformer3DModel

    pipe, members = load_pipeline(LTXPipeline, large, device, dtype, offload, **components)
    return (
        pipe,
        load_denoiser(LTXVideoTransformer3DModel, small, "transformer", dtype, device, offload),
        members,
    )


def build(
    large=DEFAULTS.large,
    small=DEFAULTS.small,
    schedule=DEFAULTS.schedule,
    stack=(),
    device="cuda",
    dtype=torch.bfloat16,
    offload="none",
    **components,
):
    from flowblending_accel import (  # imports diffusers: after the user's errors
        FlowBlendingConfig,
        apply_flowblending_,
    )

    pipe, small_model, members = load(large, small, device, dtype, offload, **components)
    router = apply_flowblending_(
        pipe, small_model, FlowBlendingConfig(schedule, accelerators=[*members, *stack])
    )
    return pipe, router


def main(argv=None):
    p = parser(__doc__, DEFAULTS)
    p.add_argument(
        "--distilled",
        metavar="FOLDER",
        default=None,
        help="a step-distilled 2B converted to a diffusers folder, for the small slot (the paper's LDL)",
    )
    args = p.parse_args(argv)
    args.small = args.distilled or args.small
    return run(args, load, DEFAULTS)


if __name__ == "__main__":
    sys.exit(script(main))
