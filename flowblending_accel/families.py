"""Pipeline families: where a pipeline keeps its denoiser, how it passes the timestep, and what a small
model must share with the large one to be a drop-in for some of its steps.

An open registry: :func:`register_family` adds one (first match wins, the generic family is last).
Matching is by pipeline class name over the class's MRO, so subclasses of a known pipeline match too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Family:
    """How one pipeline family calls its denoiser.

    Args:
        name: short name, shown in errors and reports.
        pipeline_pattern: regex matched (``re.fullmatch``) against the pipeline class and its bases' names.
        denoisers: pipeline attributes that may hold a denoiser, in order; all present ones are routed.
        shared_config: denoiser config fields the small model must share (latent channels, patching,
            conditioning widths); hidden size, depth and heads may differ.
        timestep_arg: keyword name and positional index of the timestep argument.
        same_class: require the small model to be of the large model's class.
        separate_cfg_calls: the pipeline makes one denoiser call per CFG branch, conditional first (Wan), so
            a guidance-free small stage can skip the unconditional call.
        note: one line on the family's calling convention, for humans.
    """

    name: str
    pipeline_pattern: str
    denoisers: tuple[str, ...]
    shared_config: tuple[str, ...]
    timestep_arg: tuple[str, int] = ("timestep", 1)
    same_class: bool = True
    separate_cfg_calls: bool = False
    note: str = ""

    def matches(self, pipe: Any) -> bool:
        names = [cls.__name__ for cls in type(pipe).__mro__]
        return any(re.fullmatch(self.pipeline_pattern, name) for name in names)

    def present_denoisers(self, pipe: Any) -> list[str]:
        return [name for name in self.denoisers if isinstance(getattr(pipe, name, None), torch.nn.Module)]


_FAMILIES: list[Family] = []


def register_family(family: Family, *, before: str | None = None) -> Family:
    """Add ``family`` to the registry (before the family named ``before``, else before the generic one)."""
    if any(known.name == family.name for known in _FAMILIES):
        raise ValueError(f"a pipeline family named {family.name!r} is already registered.")
    names = [known.name for known in _FAMILIES]
    anchor = before if before is not None else ("generic" if "generic" in names else None)
    _FAMILIES.insert(names.index(anchor) if anchor in names else len(_FAMILIES), family)
    return family


def registered_families() -> list[Family]:
    return list(_FAMILIES)


def family_for(pipe: Any) -> Family:
    """The first registered family that matches ``pipe`` and finds a denoiser on it."""
    for family in _FAMILIES:
        if family.matches(pipe) and family.present_denoisers(pipe):
            return family
    searched = sorted({name for family in _FAMILIES for name in family.denoisers})
    raise ValueError(
        f"{type(pipe).__name__} has no denoiser FlowBlending knows: looked for a torch module in "
        f"{searched}. Pass `denoisers=('<attribute>',)` naming the pipeline attribute that holds it, or "
        "register a Family for this pipeline with flowblending_accel.families.register_family."
    )


def check_pair(large: torch.nn.Module, small: Any, family: Family, where: str, strict: bool = True) -> None:
    """Raise a clear error when ``small`` cannot stand in for ``large`` (``where`` names the attribute)."""
    if small is large:
        raise ValueError(f"small is the same module as {where}; pass a separate, smaller model.")
    if not callable(small):
        raise TypeError(f"small must be a torch module (or callable denoiser), got {type(small).__name__}.")
    large_core, small_core = _unwrap(large), _unwrap(small)
    if strict and family.same_class and type(small_core) is not type(large_core):
        raise TypeError(
            f"small is a {type(small_core).__name__} but {where} is a {type(large_core).__name__}: the "
            f"{family.name} family needs a small model of the same class. Pass strict=False to skip this check "
            "for a wrapper with the same call signature."
        )
    large_config, small_config = _config(large_core), _config(small_core)
    if large_config is None or small_config is None:
        return
    for field in family.shared_config:
        if field not in large_config:
            continue
        mine, theirs = _normalise(large_config.get(field)), _normalise(small_config.get(field))
        if mine != theirs:
            raise ValueError(
                f"small.config.{field}={theirs!r} but {where}.config.{field}={mine!r}: a small model must "
                f"share {', '.join(family.shared_config)} with the large one (same latent space and "
                "conditioning); pick the small model of the same family and version."
            )


def _unwrap(module: Any) -> Any:
    return getattr(module, "_orig_mod", module)  # torch.compile'd modules wrap the original


def _config(module: Any) -> dict | None:
    config = getattr(module, "config", None)
    return dict(config) if config is not None else None


def _normalise(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _default_families() -> list[Family]:
    return [
        Family(
            name="wan",
            pipeline_pattern=r"Wan\w*Pipeline",
            denoisers=("transformer", "transformer_2"),
            shared_config=("in_channels", "out_channels", "patch_size", "text_dim", "image_dim", "pos_embed_seq_len"),
            separate_cfg_calls=True,
            note="keyword call; split CFG (two calls per step); Wan 2.2 routes inside each expert",
        ),
        Family(
            name="ltx",
            pipeline_pattern=r"LTX\w*Pipeline",
            denoisers=("transformer",),
            shared_config=("in_channels", "out_channels", "patch_size", "patch_size_t", "caption_channels"),
            note="keyword call; batched CFG; per-token timesteps (conditioning tokens at 0) in i2v/condition",
        ),
        Family(
            name="unet",
            pipeline_pattern=r"StableDiffusion\w*Pipeline|\w*XL\w*Pipeline|LatentConsistency\w*Pipeline",
            denoisers=("unet",),
            shared_config=(
                "in_channels", "out_channels", "cross_attention_dim", "addition_embed_type",
                "projection_class_embeddings_input_dim", "time_cond_proj_dim", "class_embed_type",
            ),
            note="UNet called with the timestep positionally: unet(latents, t, encoder_hidden_states=...)",
        ),
        Family(
            name="generic",
            pipeline_pattern=r".*Pipeline\w*|.*",
            denoisers=("transformer", "transformer_2", "unet"),
            shared_config=(
                "in_channels", "out_channels", "patch_size", "patch_size_t", "text_dim", "caption_channels",
                "joint_attention_dim", "pooled_projection_dim", "guidance_embeds",
            ),
            same_class=False,
            note="any pipeline whose denoiser is a module called with a `timestep` argument",
        ),
    ]


for _family in _default_families():
    register_family(_family)
