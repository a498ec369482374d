"""The embedded demo pair: architectures, the shipped folder, and loading it as a real WanPipeline.

Large: 5 blocks x 160 wide (5 heads x 32), FFN 512, 2.1 M parameters, about 266 MFLOPs per forward.
Small: 3 blocks x 64 wide (2 heads x 32), FFN 192, 0.23 M parameters, about 27 MFLOPs per forward (~10x less).
Both share the latent interface (32 channels of the pixel-shuffle "VAE", patch 1x2x2 -> 80 tokens per clip)
and the 64-wide text encoder output, as a real model family does.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from ..core.diffusers_versions import dtype_kwargs
from .pixel_vae import PixelShuffleVAE
from .text import MAX_SEQUENCE_LENGTH, TEXT_DIM

PIXEL_MEAN, PIXEL_STD = -0.85, 0.42  # measured over the training clips (mostly background at -1)
COMMON = dict(
    patch_size=(1, 2, 2),
    in_channels=32,
    out_channels=32,
    text_dim=TEXT_DIM,
    freq_dim=64,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=32,
)
LARGE = dict(num_layers=5, num_attention_heads=5, attention_head_dim=32, ffn_dim=512)
SMALL = dict(num_layers=3, num_attention_heads=2, attention_head_dim=32, ffn_dim=192)
SHIFT = 3.0
SMALL_SUBFOLDER = "transformer_small"
CLASSIFIER_SUBFOLDER = "classifier"
# What every demo call passes: the models were trained on 8-token prompts, 32x32 pixels, 9 frames.
CALL_DEFAULTS = dict(height=32, width=32, num_frames=9, max_sequence_length=MAX_SEQUENCE_LENGTH)


def demo_call_kwargs(
    prompts: list[str], seeds: list[int], steps: int, guidance_scale: float, output_type: str = "np"
) -> dict:
    """One pipeline call's arguments: each sample has its own seeded generator, so its noise ignores the
    batch."""
    return dict(
        prompt=list(prompts),
        negative_prompt=[""] * len(prompts),
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        output_type=output_type,
        generator=[torch.Generator().manual_seed(seed) for seed in seeds],
        **CALL_DEFAULTS,
    )


def _transformer(spec: dict, seed: int, common: dict | None = None):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**{**COMMON, **(common or {})}, **spec)


def build_large(seed: int = 0, overrides: dict | None = None, common: dict | None = None):
    """The large transformer; ``overrides`` change its size, ``common`` what both models share (ablations)."""
    return _transformer({**LARGE, **(overrides or {})}, seed, common)


def build_small(seed: int = 1, overrides: dict | None = None, common: dict | None = None):
    return _transformer({**SMALL, **(overrides or {})}, seed, common)


def build_vae(pixel_mean: float = PIXEL_MEAN, pixel_std: float = PIXEL_STD) -> PixelShuffleVAE:
    return PixelShuffleVAE(pixel_mean=pixel_mean, pixel_std=pixel_std).eval()


def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """Exactly what WanPipeline does: encode, keep the real tokens, zero the padding positions."""
    tokens = tokenizer(
        prompts, padding="max_length", max_length=MAX_SEQUENCE_LENGTH, truncation=True, return_tensors="pt"
    )
    hidden = text_encoder(tokens.input_ids, tokens.attention_mask).last_hidden_state
    return hidden * tokens.attention_mask[..., None].to(hidden.dtype)


def default_pair_path() -> Path:
    """Folder of the shipped pair inside the installed package."""
    return Path(str(resources.files("flowblending_accel.assets").joinpath("demo_pair")))


def load_demo_pipeline(path: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """``(pipe, small)``: the shipped WanPipeline (large transformer inside) and its small transformer."""
    from diffusers import WanPipeline, WanTransformer3DModel

    folder = Path(path) if path is not None else default_pair_path()
    if not (folder / "model_index.json").exists():
        raise FileNotFoundError(
            f"no demo pair at {folder}: train one with `flowblending-accel train-demo` and export it, "
            "or reinstall the package (the pair ships in flowblending_accel/assets/demo_pair)."
        )
    from ..core import patches
    from ..support.progress import quiet_library_bars

    # diffusers warns that WanPipeline expects an AutoencoderKLWan; ours is deliberate.
    with patches.silenced({"diffusers": ()}), quiet_library_bars():
        pipe = WanPipeline.from_pretrained(folder, **dtype_kwargs(dtype))
    pipe.set_progress_bar_config(disable=True)
    loading = {"subfolder": SMALL_SUBFOLDER, **dtype_kwargs(dtype)}
    small = WanTransformer3DModel.from_pretrained(folder, **loading).eval()
    return pipe, small
