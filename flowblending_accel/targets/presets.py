"""Random-initialised targets: real-size configs (``wan2.1-14b+1.3b``, ``wan2.2-a14b``, ``ltx-13b+2b``) for
speed and memory without downloads, and tiny ones for CPU dry runs of the same code paths.

Sizes from the public configs: Wan 2.1 14B dim 5120 = 40 x 128, FFN 13824, 40 layers; Wan 1.3B dim 1536 =
12 x 128, FFN 8960, 30 layers (patch 1x2x2, 16 latent channels, umT5-XXL text width 4096; each Wan 2.2 A14B
expert has the 14B's size). LTX-Video 13B: 48 layers of 32 x 128, cross-attention 4096; 2B: 28 layers of
32 x 64, cross-attention 2048 (128 latent channels, patch 1, T5-XXL caption width 4096). Outputs are noise,
so quality columns are skipped; FLOPs and wall time are those of the real sizes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .base import Target
from .prompts import Prompt

WAN = {
    "14b": dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40),
    "1.3b": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30),
    # The 1.3B's width in two layers: a compatible small model for an all-large run, which never calls it.
    "1.3b-2layers": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=2),
    "tiny": dict(num_attention_heads=4, attention_head_dim=12, ffn_dim=64, num_layers=3),
    "tiny-small": dict(num_attention_heads=2, attention_head_dim=12, ffn_dim=32, num_layers=2),
}
LTX = {
    "13b": dict(num_attention_heads=32, attention_head_dim=128, num_layers=48, cross_attention_dim=4096),
    "2b": dict(num_attention_heads=32, attention_head_dim=64, num_layers=28, cross_attention_dim=2048),
    "tiny": dict(num_attention_heads=4, attention_head_dim=8, num_layers=3, cross_attention_dim=32),
    "tiny-small": dict(num_attention_heads=2, attention_head_dim=8, num_layers=2, cross_attention_dim=16),
}


@dataclass(frozen=True)
class Preset:
    kind: str  # "wan", "wan22" or "ltx"
    large: str
    small: str
    text_dim: int
    tokens: int  # prompt tokens of the random embeddings
    size: tuple[int, int, int]  # default height, width, frames
    steps: int
    guidance: float

    @property
    def pipeline_class_name(self) -> str:
        return "LTXPipeline" if self.kind == "ltx" else "WanPipeline"

    @property
    def denoisers(self) -> tuple[str, ...]:
        return ("transformer", "transformer_2") if self.kind == "wan22" else ("transformer",)


PRESETS = {
    "wan2.1-14b+1.3b": Preset("wan", "14b", "1.3b", 4096, 512, (480, 832, 81), 50, 5.0),
    "wan2.1-1.3b": Preset("wan", "1.3b", "1.3b-2layers", 4096, 512, (480, 832, 81), 50, 5.0),
    "wan2.2-a14b": Preset("wan22", "14b", "1.3b", 4096, 512, (480, 832, 81), 40, 4.0),
    "ltx-13b+2b": Preset("ltx", "13b", "2b", 4096, 128, (480, 704, 121), 40, 3.0),
    "tiny-wan": Preset("wan", "tiny", "tiny-small", 32, 8, (16, 16, 5), 10, 5.0),
    "tiny-wan2.2": Preset("wan22", "tiny", "tiny-small", 32, 8, (16, 16, 5), 10, 4.0),
    "tiny-ltx": Preset("ltx", "tiny", "tiny-small", 32, 8, (32, 32, 9), 10, 3.0),
}


def check_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"random preset {name!r} is unknown; choose one of {', '.join(PRESETS)}.")
    return PRESETS[name]


def preset_target(
    name: str,
    device: str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    height: int | None = None,
    width: int | None = None,
    frames: int | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    offload: str = "none",
) -> Target:
    """The preset's pipeline and small model, random-initialised on ``device`` in ``dtype`` (in an offload
    mode: built on the CPU, then put on ``device`` in that mode)."""
    from ..accelerators import as_configs, enable_offload

    preset = check_preset(name)
    torch.manual_seed(0)
    build_on = device if offload == "none" else "cpu"
    with torch.device(build_on), _default_dtype(dtype):  # built in place: a 14B model never exists in float32
        pipe, small = _ltx(preset) if preset.kind == "ltx" else _wan(preset)
    members = enable_offload(pipe, device, offload) if offload != "none" else []
    pipe.set_progress_bar_config(disable=True)
    default_height, default_width, default_frames = preset.size
    base = dict(
        height=height or default_height,
        width=width or default_width,
        num_frames=frames or default_frames,
        num_inference_steps=steps or preset.steps,
        output_type="latent",
        guidance_scale=preset.guidance if guidance_scale is None else guidance_scale,
        **_embeddings(preset, build_on, dtype),
    )
    described = (
        f"{name} random init, {dtype}, {base['width']}x{base['height']}, {base['num_frames']} frames, "
        f"{base['num_inference_steps']} steps, CFG {base['guidance_scale']:g}, denoising loop only "
        "(latent output)"
    )
    return Target(
        f"random-weights {name}",
        pipe,
        small,
        device,
        described,
        base,
        [Prompt(None)],
        quality=False,
        stack_members=tuple(as_configs(members)),
    )


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _loaded_like(model: torch.nn.Module) -> torch.nn.Module:
    """Built in the default dtype, then, as ``from_pretrained(torch_dtype=...)`` does, the modules the class
    keeps in float32 (norms, time embedding) put back in float32: the precision of a real checkpoint."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, module in model.named_modules():
        if any(part in keep for part in name.split(".")):
            module.float()
    return model.eval()


def _wan(preset: Preset) -> tuple[Any, Any]:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    common = dict(
        patch_size=(1, 2, 2),
        in_channels=16,
        out_channels=16,
        text_dim=preset.text_dim,
        freq_dim=256,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=1024,
    )
    large = _loaded_like(WanTransformer3DModel(**common, **WAN[preset.large]))
    small = _loaded_like(WanTransformer3DModel(**common, **WAN[preset.small]))
    experts = {}
    if preset.kind == "wan22":
        experts = dict(
            transformer_2=_loaded_like(WanTransformer3DModel(**common, **WAN[preset.large])),
            boundary_ratio=0.875,
        )
    tiny = preset.large == "tiny"
    vae = (
        AutoencoderKLWan(
            base_dim=3,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        )
        if tiny
        else AutoencoderKLWan()
    )
    with torch.device("cpu"):  # a scheduler's tables stay on the host whatever device the models use
        scheduler = UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0
        )
    pipe = WanPipeline(
        tokenizer=None, text_encoder=None, vae=vae.eval(), scheduler=scheduler, transformer=large, **experts
    )
    return pipe, small


def _ltx(preset: Preset) -> tuple[Any, Any]:
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    from ..tiny_models import tiny_ltx_vae

    tiny = preset.large == "tiny"
    channels = 8 if tiny else 128
    common = dict(
        in_channels=channels,
        out_channels=channels,
        patch_size=1,
        patch_size_t=1,
        caption_channels=preset.text_dim,
    )
    large = _loaded_like(LTXVideoTransformer3DModel(**common, **LTX[preset.large]))
    small = _loaded_like(LTXVideoTransformer3DModel(**common, **LTX[preset.small]))
    vae = tiny_ltx_vae() if tiny else AutoencoderKLLTXVideo().eval()
    with torch.device("cpu"):  # a scheduler's tables stay on the host whatever device the models use
        scheduler = FlowMatchEulerDiscreteScheduler()
    pipe = LTXPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        transformer=large,
    )
    return pipe, small


def _embeddings(preset: Preset, device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Fixed random prompt embeddings of the text encoder's width (random weights need no real prompt)."""
    generator = torch.Generator().manual_seed(0)
    positive = torch.randn(1, preset.tokens, preset.text_dim, generator=generator).to(device, dtype)
    negative = torch.randn(1, preset.tokens, preset.text_dim, generator=generator).to(device, dtype)
    embeddings = dict(prompt_embeds=positive, negative_prompt_embeds=negative)
    if preset.kind == "ltx":
        mask = torch.ones(1, preset.tokens, device=device)
        embeddings.update(prompt_attention_mask=mask, negative_prompt_attention_mask=mask)
    return embeddings
