"""Tiny pipelines saved as diffusers folders, with tiny text stacks so they take prompt strings: what the
tools' ``--large FOLDER --small FOLDER`` and the recipes load, built offline in a few seconds."""

from __future__ import annotations

from pathlib import Path

from ..support.files import write_folder_defaults
from ..support.progress import quiet_library_bars
from .text import with_text
from .tiny import (
    flux_call_kwargs,
    ltx_call_kwargs,
    sd_call_kwargs,
    tiny_flux_pair,
    tiny_flux_pipeline,
    tiny_ltx_pair,
    tiny_ltx_pipeline,
    tiny_sd_pipeline,
    tiny_unet_pair,
    tiny_wan_pair,
    tiny_wan_pipeline,
    wan_call_kwargs,
)

FOLDER_FAMILIES = ("wan", "wan2.2", "ltx", "sd", "flux")
# The size and steps each tiny family runs at (its positional range is a few latent tokens wide).
TINY_CALLS = {
    "wan": wan_call_kwargs,
    "wan2.2": wan_call_kwargs,
    "ltx": ltx_call_kwargs,
    "sd": sd_call_kwargs,
    "flux": flux_call_kwargs,
}


def _pipeline_and_small(family: str):
    if family == "wan":
        large, small = tiny_wan_pair()
        return tiny_wan_pipeline(large), small, "wan"
    if family == "wan2.2":
        high, small = tiny_wan_pair()
        low, _ = tiny_wan_pair(seed=5)
        return tiny_wan_pipeline(high, transformer_2=low, boundary_ratio=0.7), small, "wan"
    if family == "ltx":
        large, small = tiny_ltx_pair()
        return tiny_ltx_pipeline(large), small, "ltx"
    if family == "sd":
        large, small = tiny_unet_pair()
        return tiny_sd_pipeline(large), small, "sd"
    if family == "flux":
        large, small = tiny_flux_pair()
        return tiny_flux_pipeline(large), small, "flux"
    raise ValueError(f"family {family!r}: use one of {', '.join(FOLDER_FAMILIES)}.")


def save_tiny_folders(
    root: str | Path, family: str, bare_small: bool = False, text: bool = True
) -> tuple[str, str]:
    """Save a tiny ``family`` pipeline to ``root/pipeline`` and its small denoiser to ``root/small``
    (under the denoiser's name, or bare with ``bare_small``); returns both paths as strings."""
    root = Path(root)
    pipe, small, text_family = _pipeline_and_small(family)
    if text:
        with_text(pipe, text_family)
    denoiser = "unet" if family == "sd" else "transformer"
    with quiet_library_bars():
        pipe.save_pretrained(root / "pipeline")
        small.save_pretrained(root / "small" if bare_small else root / "small" / denoiser)
    write_folder_defaults(root / "pipeline", TINY_CALLS[family]())  # the size every tool then runs at
    return str(root / "pipeline"), str(root / "small")
