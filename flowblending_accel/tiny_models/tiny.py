"""Tiny random-weight diffusers pipelines and large/small pairs, for tests, examples and CPU smoke runs.

Configs follow diffusers' own tiny test models; every denoiser has at least two blocks (FirstBlockCache
needs a leader and a tail). Nothing is downloaded: text conditioning is passed as embeddings.
"""

from __future__ import annotations

from typing import Any

import torch

TEXT_DIM = 32
TEXT_TOKENS = 8


def _seeded(seed: int, build):
    torch.manual_seed(seed)
    return build().eval()


def tiny_wan_transformer(layers: int = 3, heads: int = 4, head_dim: int = 12, ffn: int = 64, seed: int = 0):
    from diffusers import WanTransformer3DModel

    return _seeded(
        seed,
        lambda: WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=heads,
            attention_head_dim=head_dim,
            in_channels=16,
            out_channels=16,
            text_dim=TEXT_DIM,
            freq_dim=256,
            ffn_dim=ffn,
            num_layers=layers,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        ),
    )


def tiny_wan_pair(seed: int = 0):
    """(large, small): 3 layers x 4 heads vs 2 layers x 2 heads, same channels, patch and text width."""
    return tiny_wan_transformer(3, 4, seed=seed), tiny_wan_transformer(2, 2, ffn=32, seed=seed + 1)


def tiny_wan_pipeline(
    transformer=None, scheduler=None, transformer_2=None, boundary_ratio=None, seed: int = 0
):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    vae = _seeded(
        seed,
        lambda: AutoencoderKLWan(
            base_dim=3,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        ),
    )
    pipe = WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=vae,
        scheduler=scheduler or FlowMatchEulerDiscreteScheduler(shift=5.0),
        transformer=transformer if transformer is not None else tiny_wan_pair(seed)[0],
        transformer_2=transformer_2,
        boundary_ratio=boundary_ratio,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_ltx_transformer(layers: int = 2, heads: int = 4, head_dim: int = 8, seed: int = 0):
    from diffusers import LTXVideoTransformer3DModel

    return _seeded(
        seed,
        lambda: LTXVideoTransformer3DModel(
            in_channels=8,
            out_channels=8,
            patch_size=1,
            patch_size_t=1,
            num_attention_heads=heads,
            attention_head_dim=head_dim,
            cross_attention_dim=heads * head_dim,
            num_layers=layers,
            caption_channels=TEXT_DIM,
        ),
    )


def tiny_ltx_pair(seed: int = 0):
    return tiny_ltx_transformer(3, 4, seed=seed), tiny_ltx_transformer(2, 2, seed=seed + 1)


def tiny_ltx_vae(seed: int = 0):
    from diffusers import AutoencoderKLLTXVideo

    def build():
        vae = AutoencoderKLLTXVideo(
            in_channels=3,
            out_channels=3,
            latent_channels=8,
            block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1),
            spatio_temporal_scaling=(True, True, False, False),
            decoder_spatio_temporal_scaling=(True, True, False, False),
            decoder_inject_noise=(False,) * 5,
            upsample_residual=(False,) * 4,
            upsample_factor=(1, 1, 1, 1),
            timestep_conditioning=False,
            patch_size=1,
            patch_size_t=1,
            encoder_causal=True,
            decoder_causal=False,
        )
        vae.use_framewise_encoding = vae.use_framewise_decoding = False
        return vae

    return _seeded(seed, build)


def tiny_ltx_pipeline(transformer=None, scheduler=None, pipeline_class=None, seed: int = 0):
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline

    pipeline_class = pipeline_class or LTXPipeline
    pipe = pipeline_class(
        scheduler=scheduler or FlowMatchEulerDiscreteScheduler(),
        vae=tiny_ltx_vae(seed),
        text_encoder=None,
        tokenizer=None,
        transformer=transformer if transformer is not None else tiny_ltx_pair(seed)[0],
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_unet(blocks=(32, 64), layers: int = 2, seed: int = 0):
    from diffusers import UNet2DConditionModel

    return _seeded(
        seed,
        lambda: UNet2DConditionModel(
            block_out_channels=blocks,
            layers_per_block=layers,
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=TEXT_DIM,
            norm_num_groups=min(blocks),
        ),
    )


def tiny_unet_pair(seed: int = 0):
    return tiny_unet((32, 64), 2, seed=seed), tiny_unet((16, 32), 1, seed=seed + 1)


def tiny_sd_pipeline(unet=None, scheduler=None, seed: int = 0):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline

    vae = _seeded(
        seed,
        lambda: AutoencoderKL(
            block_out_channels=(8, 8),
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            norm_num_groups=8,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        ),
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        unet=unet if unet is not None else tiny_unet_pair(seed)[0],
        scheduler=scheduler or DDIMScheduler(steps_offset=1, clip_sample=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux_transformer(double: int = 2, single: int = 2, heads: int = 2, seed: int = 0):
    from diffusers import FluxTransformer2DModel

    return _seeded(
        seed,
        lambda: FluxTransformer2DModel(
            patch_size=1,
            in_channels=4,
            num_layers=double,
            num_single_layers=single,
            attention_head_dim=16,
            num_attention_heads=heads,
            joint_attention_dim=TEXT_DIM,
            pooled_projection_dim=TEXT_DIM,
            axes_dims_rope=[4, 4, 8],
        ),
    )


def tiny_flux_pair(seed: int = 0):
    """(large, small): 2 double + 2 single blocks x 2 heads vs 1 + 1 x 1 head."""
    return tiny_flux_transformer(2, 2, 2, seed=seed), tiny_flux_transformer(1, 1, 1, seed=seed + 1)


def tiny_flux_pipeline(transformer=None, scheduler=None, seed: int = 0):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline

    vae = _seeded(
        seed,
        lambda: AutoencoderKL(
            sample_size=32,
            block_out_channels=(4,),
            layers_per_block=1,
            latent_channels=1,
            norm_num_groups=1,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.0609,
            scaling_factor=1.5035,
        ),
    )
    pipe = FluxPipeline(
        scheduler=scheduler or FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer if transformer is not None else tiny_flux_pair(seed)[0],
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def text_embeddings(
    batch: int = 1, tokens: int = TEXT_TOKENS, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) random prompt embeddings of the tiny models' text width."""
    generator = torch.Generator().manual_seed(seed)
    positive = torch.randn(batch, tokens, TEXT_DIM, generator=generator)
    negative = torch.randn(batch, tokens, TEXT_DIM, generator=generator)
    return positive, negative


def wan_call_kwargs(
    steps: int = 10, guidance_scale: float = 5.0, seed: int = 0, **extra: Any
) -> dict[str, Any]:
    positive, negative = text_embeddings()
    return dict(
        prompt_embeds=positive,
        negative_prompt_embeds=negative,
        height=16,
        width=16,
        num_frames=5,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        output_type="latent",
        generator=torch.Generator().manual_seed(seed),
        **extra,
    )


def ltx_call_kwargs(
    steps: int = 10, guidance_scale: float = 3.0, seed: int = 0, **extra: Any
) -> dict[str, Any]:
    positive, negative = text_embeddings()
    mask = torch.ones(1, TEXT_TOKENS)
    return dict(
        prompt_embeds=positive,
        negative_prompt_embeds=negative,
        prompt_attention_mask=mask,
        negative_prompt_attention_mask=mask,
        height=32,
        width=32,
        num_frames=9,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        output_type="latent",
        generator=torch.Generator().manual_seed(seed),
        **extra,
    )


def sd_call_kwargs(
    steps: int = 10, guidance_scale: float = 5.0, seed: int = 0, **extra: Any
) -> dict[str, Any]:
    positive, negative = text_embeddings()
    return dict(
        prompt_embeds=positive,
        negative_prompt_embeds=negative,
        height=32,
        width=32,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        output_type="latent",
        generator=torch.Generator().manual_seed(seed),
        **extra,
    )


def flux_call_kwargs(
    steps: int = 10, true_cfg_scale: float = 1.0, seed: int = 0, **extra: Any
) -> dict[str, Any]:
    """Guidance-distilled style by default (one call per step); ``true_cfg_scale > 1`` adds the negative
    branch (two calls per step)."""
    positive, negative = text_embeddings()
    pooled = dict(pooled_prompt_embeds=positive[:, 0], negative_pooled_prompt_embeds=negative[:, 0])
    cfg = dict(negative_prompt_embeds=negative, true_cfg_scale=true_cfg_scale) if true_cfg_scale > 1 else {}
    if not cfg:
        pooled.pop("negative_pooled_prompt_embeds")
    return dict(
        prompt_embeds=positive,
        height=16,
        width=16,
        num_inference_steps=steps,
        output_type="latent",
        generator=torch.Generator().manual_seed(seed),
        **pooled,
        **cfg,
        **extra,
    )
