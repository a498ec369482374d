"""Real-size random-initialised configs (``wan2.1-14b+1.3b``) and tiny ones, for speed without downloads.

Their outputs are noise, so quality columns are skipped; FLOPs and wall time are those of the real sizes.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Target

# Wan 2.1 transformer sizes (public configs): 14B dim 5120 = 40 x 128, FFN 13824, 40 layers; 1.3B dim 1536 =
# 12 x 128, FFN 8960, 30 layers; both patch 1x2x2, 16 latent channels, umT5-XXL text width 4096.
WAN_SIZES = {
    "14b": dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40),
    "1.3b": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30),
    "tiny": dict(num_attention_heads=4, attention_head_dim=12, ffn_dim=64, num_layers=3),
    "tiny-small": dict(num_attention_heads=2, attention_head_dim=12, ffn_dim=32, num_layers=2),
}
RANDOM_PRESETS = {"wan2.1-14b+1.3b": ("14b", "1.3b", 4096), "tiny-wan": ("tiny", "tiny-small", 32)}


def check_preset(preset: str) -> None:
    if preset not in RANDOM_PRESETS:
        raise ValueError(f"--random-weights {preset!r} is unknown; choose one of {sorted(RANDOM_PRESETS)}.")


def random_wan_target(
    preset: str, device: str, dtype: torch.dtype, height: int, width: int, frames: int, steps: int = 50
) -> Target:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    check_preset(preset)
    large_size, small_size, text_dim = RANDOM_PRESETS[preset]
    common = dict(
        patch_size=(1, 2, 2),
        in_channels=16,
        out_channels=16,
        text_dim=text_dim,
        freq_dim=256,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=1024,
    )
    with torch.device(device):
        torch.manual_seed(0)
        large = WanTransformer3DModel(**common, **WAN_SIZES[large_size]).to(dtype).eval()
        small = WanTransformer3DModel(**common, **WAN_SIZES[small_size]).to(dtype).eval()
        # The real Wan VAE config (random init), except for the tiny CPU preset; latent output skips decoding.
        vae = (
            (
                AutoencoderKLWan()
                if large_size != "tiny"
                else AutoencoderKLWan(
                    base_dim=3,
                    z_dim=16,
                    dim_mult=[1, 1, 1, 1],
                    num_res_blocks=1,
                    temperal_downsample=[False, True, True],
                )
            )
            .to(torch.float32)
            .eval()
        )
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0
    )
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler, transformer=large)
    pipe.set_progress_bar_config(disable=True)
    tokens = 512 if text_dim == 4096 else 8
    generator = torch.Generator().manual_seed(0)
    positive = torch.randn(1, tokens, text_dim, generator=generator).to(device, dtype)
    negative = torch.randn(1, tokens, text_dim, generator=generator).to(device, dtype)

    def call_kwargs(seed: int) -> dict[str, Any]:
        return dict(
            prompt_embeds=positive,
            negative_prompt_embeds=negative,
            height=height,
            width=width,
            num_frames=frames,
            num_inference_steps=steps,
            guidance_scale=5.0,
            output_type="latent",
            generator=torch.Generator(device).manual_seed(seed),
        )

    return Target(
        f"random-weights {preset}",
        pipe,
        small,
        call_kwargs,
        "frames",
        False,
        device,
        f"{preset} random init, {dtype}, {width}x{height}, {frames} frames, {steps} UniPC steps, CFG 5, "
        "denoising loop only (latent output)",
    )
