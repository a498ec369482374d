"""Tiny random-weight modular pipelines (diffusers' ``ModularPipeline`` for Wan 2.1, Wan 2.2 and LTX).

A modular pipeline is built from its blocks and handed its components in memory, as the classic tiny
pipelines are: nothing is downloaded. The text-encoder block is left out, since the tiny models take their
prompt as embeddings (:func:`~.tiny.text_embeddings`); the guider (diffusers' ``ClassifierFreeGuidance``)
is the blocks' default, so the modular pipelines run CFG as one denoiser call per branch, conditional first.
Each builder takes its denoiser(s) and scheduler from the classic tiny pipeline of the same family, so a
modular and a classic pipeline around the same transformer can be compared bit for bit.
"""

from __future__ import annotations

from typing import Any

from .tiny import ltx_call_kwargs, tiny_ltx_pipeline, tiny_wan_pair, tiny_wan_pipeline, wan_call_kwargs

# The tiny Wan 2.2 boundary (the tiny folders' too): on the 10-step tiny grid the high-noise expert serves
# steps 0-6 (t >= 700) and the low-noise one 7-9, so an L40-S40-L20 schedule switches inside both.
WAN22_BOUNDARY = 0.7


def tiny_modular_wan_pipeline(transformer=None, scheduler=None, seed: int = 0):
    """Wan 2.1's modular pipeline (``WanBlocks`` without its text encoder) around ``transformer``."""
    from diffusers.modular_pipelines import WanBlocks, WanModularPipeline

    classic = tiny_wan_pipeline(transformer, scheduler, seed=seed)
    return _assembled(
        WanModularPipeline, WanBlocks(), _components(classic, "transformer", "vae", "scheduler")
    )


def tiny_modular_wan22_pipeline(
    transformer=None,
    transformer_2=None,
    boundary_ratio: float = WAN22_BOUNDARY,
    scheduler=None,
    seed: int = 0,
):
    """Wan 2.2's two-expert modular pipeline (``Wan22Blocks``): ``transformer`` serves the high-noise steps,
    ``transformer_2`` the rest, split at ``boundary_ratio`` as the classic ``WanPipeline`` splits them. Its
    guiders are the blocks' defaults: scale 4.0 for the high-noise expert, 3.0 for the low-noise one."""
    from diffusers.modular_pipelines import Wan22Blocks, Wan22ModularPipeline

    high = transformer if transformer is not None else tiny_wan_pair(seed)[0]
    low = transformer_2 if transformer_2 is not None else tiny_wan_pair(seed + 5)[0]
    classic = tiny_wan_pipeline(high, scheduler, low, boundary_ratio, seed=seed)
    components = _components(classic, "transformer", "transformer_2", "vae", "scheduler")
    pipe = _assembled(Wan22ModularPipeline, Wan22Blocks(), components)
    pipe.update_components(boundary_ratio=boundary_ratio)
    return pipe


def tiny_modular_ltx_pipeline(transformer=None, scheduler=None, seed: int = 0):
    """LTX-Video's modular text-to-video pipeline (``LTXBlocks``) around ``transformer``."""
    from diffusers.modular_pipelines import LTXModularPipeline
    from diffusers.modular_pipelines.ltx import LTXBlocks

    classic = tiny_ltx_pipeline(transformer, scheduler, seed=seed)
    return _assembled(
        LTXModularPipeline, LTXBlocks(), _components(classic, "transformer", "vae", "scheduler")
    )


def modular_wan_call_kwargs(steps: int = 10, seed: int = 0, **extra: Any) -> dict[str, Any]:
    """A modular Wan call at the classic tiny Wan call's size; the guidance scale is the guider's (5.0, as
    :func:`~.tiny.wan_call_kwargs`). ``output="latents"`` returns the denoised latents."""
    return _as_modular(wan_call_kwargs(steps=steps, seed=seed), extra)


def modular_ltx_call_kwargs(steps: int = 10, seed: int = 0, **extra: Any) -> dict[str, Any]:
    """A modular LTX call at the classic tiny LTX call's size, returning the denoised latents."""
    return _as_modular(ltx_call_kwargs(steps=steps, seed=seed), extra)


def _as_modular(classic: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """A classic tiny call's arguments as a modular pipeline takes them: the guider holds the guidance scale,
    and ``output`` names the state field to return."""
    del classic["guidance_scale"], classic["output_type"]
    return {**classic, "output": "latents", **extra}


def _components(classic: Any, *names: str) -> dict[str, Any]:
    return {name: getattr(classic, name) for name in names}


def _assembled(pipeline_class: type, blocks: Any, components: dict[str, Any]) -> Any:
    blocks.sub_blocks.pop("text_encoder")  # prompts come as embeddings
    _quiet_loops(blocks)  # the pipeline keeps these blocks (``pipe.blocks`` is a copy)
    pipe = pipeline_class(blocks=blocks)
    pipe.update_components(**components)
    return pipe


def _quiet_loops(block: Any) -> None:
    # ModularPipeline.set_progress_bar_config reaches only the top-level blocks; the loop is nested deeper.
    if hasattr(block, "set_progress_bar_config"):
        block.set_progress_bar_config(disable=True)
    for child in getattr(block, "sub_blocks", {}).values():
        _quiet_loops(child)
