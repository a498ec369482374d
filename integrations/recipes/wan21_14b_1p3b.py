"""Wan 2.1 T2V 14B + 1.3B: the paper's Wan pair, large early and late, small in the middle (L40-S40-L20).

    python integrations/recipes/wan21_14b_1p3b.py --prompt "A teddy bear washing the dishes" \\
        --stack dpm++:25 fbc:0.05 compile --baseline

Memory, from the public parameter counts in bf16 (estimates, not measured here): the 14B transformer
~28.6 GB, the 1.3B ~2.8 GB, the umT5-XXL text encoder ~11.4 GB, the VAE ~0.25 GB; all resident ~43 GB of
weights plus activations. The pipeline is loaded on the CPU and put on the GPU in --offload's mode; the
estimated peaks at 480x832, 81 frames (benchmarks/results/memory-plan): none 44.6 GiB, model 31.8 GiB (one
component at a time; 14B + 1.3B while denoising), group 7.2 GiB (a block at a time, the next prefetched; the
1.3B prefetched whole before its stage), sequential 5.2 GiB. On a 24 GB GPU: --offload group.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import Defaults, load_denoiser, load_pipeline, parser, run, script  # noqa: E402

DEFAULTS = Defaults(
    "Wan-AI/Wan2.1-T2V-14B-Diffusers",
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    height=480,
    width=832,
    frames=81,
    steps=50,
    guidance=5.0,
    fps=16,
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
    from diffusers import WanPipeline, WanTransformer3DModel

    pipe, members = load_pipeline(WanPipeline, large, device, dtype, offload, **components)
    return pipe, load_denoiser(WanTransformer3DModel, small, "transformer", dtype, device, offload), members


def build(
    large=DEFAULTS.large,
    small=DEFAULTS.small,
    schedule=DEFAULTS.schedule,
    stack=(),
    device="cuda",
    dtype=torch.bfloat16,
    small_guidance="on",
    offload="none",
    **components,
):
    from flowblending_accel import (  # imports diffusers: after the user's errors
        FlowBlendingConfig,
        apply_flowblending_,
    )

    pipe, small_model, members = load(large, small, device, dtype, offload, **components)
    router = apply_flowblending_(
        pipe,
        small_model,
        FlowBlendingConfig(
            schedule,
            accelerators=list(stack),
            small_guidance=small_guidance,
            small_distilled=small_guidance == "off",
        ),
    )
    return pipe, router


def main(argv=None):
    p = parser(__doc__, DEFAULTS)
    p.add_argument(
        "--small-guidance",
        choices=("on", "off"),
        default="on",
        help="off: guidance-free small stage, for a step- or guidance-distilled small model (LDL)",
    )
    args = p.parse_args(argv)
    return run(
        args, load, DEFAULTS, small_guidance=args.small_guidance, small_distilled=args.small_guidance == "off"
    )


if __name__ == "__main__":
    sys.exit(script(main))
