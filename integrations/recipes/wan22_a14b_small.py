"""Wan 2.2 T2V A14B (high- and low-noise experts) with a small Wan model routed inside each expert.

    python integrations/recipes/wan22_a14b_small.py --prompt "A teddy bear washing the dishes" --baseline

The pipeline's own boundary_ratio picks the expert; inside it, the router picks large or small by stage, so
"L40-S40-L20" runs the small model in the middle of the trajectory whichever expert owns those steps. Wan 2.1
1.3B shares Wan 2.2 A14B's 16-channel latent space, patch size and umT5 text width.

Memory, from the public parameter counts in bf16 (estimates, not measured here): two 14B experts ~57 GB,
the 1.3B ~2.8 GB, the umT5-XXL text encoder ~11.4 GB; all resident ~72 GB plus activations. --offload runs
diffusers' enable_model_cpu_offload: one expert at a time on the GPU (the small model follows it), ~31 GB of
weights while denoising. --offload group offloads a block at a time (the small model follows the experts'
group offloading: the project's own offload mode handles one large/small pair, not two experts).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import Defaults, load_denoiser, load_pipeline, parser, run, script  # noqa: E402

DEFAULTS = Defaults(
    "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    height=480,
    width=832,
    frames=81,
    steps=40,
    guidance=4.0,
    fps=16,
)
EXPERTS = ("transformer", "transformer_2")


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
    # The project's own offload (offload:1) handles one large/small pair; with two experts the small model
    # follows the experts' group offloading instead.
    members = [member for member in members if not member.startswith("offload")]
    return pipe, load_denoiser(WanTransformer3DModel, small, "transformer", dtype, device, offload), members


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
        pipe, small_model, FlowBlendingConfig(schedule, accelerators=[*members, *stack], denoisers=EXPERTS)
    )
    return pipe, router


def main(argv=None):
    args = parser(__doc__, DEFAULTS).parse_args(argv)
    return run(args, load, DEFAULTS, denoisers=EXPERTS)


if __name__ == "__main__":
    sys.exit(script(main))
