"""Tiny random-weight pipelines and pairs for tests, examples, smoke runs and CPU dry runs of the tools.

The core never imports this package; tests, the ``tiny`` command and the tools' tiny targets do.
"""

from .folders import FOLDER_FAMILIES, save_tiny_folders
from .modular import (
    modular_ltx_call_kwargs,
    modular_wan_call_kwargs,
    tiny_modular_ltx_pipeline,
    tiny_modular_wan22_pipeline,
    tiny_modular_wan_pipeline,
)
from .text import tiny_text_encoder, tiny_tokenizer, with_text
from .tiny import (
    TEXT_DIM,
    TEXT_TOKENS,
    flux_call_kwargs,
    ltx_call_kwargs,
    sd_call_kwargs,
    text_embeddings,
    tiny_flux_pair,
    tiny_flux_pipeline,
    tiny_flux_transformer,
    tiny_ltx_pair,
    tiny_ltx_pipeline,
    tiny_ltx_transformer,
    tiny_ltx_vae,
    tiny_sd_pipeline,
    tiny_unet,
    tiny_unet_pair,
    tiny_wan_pair,
    tiny_wan_pipeline,
    tiny_wan_transformer,
    wan_call_kwargs,
)

__all__ = [
    "FOLDER_FAMILIES",
    "flux_call_kwargs",
    "save_tiny_folders",
    "tiny_flux_pair",
    "tiny_flux_pipeline",
    "tiny_flux_transformer",
    "TEXT_DIM",
    "TEXT_TOKENS",
    "ltx_call_kwargs",
    "modular_ltx_call_kwargs",
    "modular_wan_call_kwargs",
    "sd_call_kwargs",
    "text_embeddings",
    "tiny_ltx_pair",
    "tiny_ltx_pipeline",
    "tiny_ltx_transformer",
    "tiny_ltx_vae",
    "tiny_modular_ltx_pipeline",
    "tiny_modular_wan22_pipeline",
    "tiny_modular_wan_pipeline",
    "tiny_sd_pipeline",
    "tiny_unet",
    "tiny_unet_pair",
    "tiny_wan_pair",
    "tiny_wan_pipeline",
    "tiny_wan_transformer",
    "wan_call_kwargs",
    "tiny_text_encoder",
    "tiny_tokenizer",
    "with_text",
]
