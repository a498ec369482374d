"""Pipeline families: the one registry of how a pipeline family keeps and calls its denoiser(s).

Everything the library needs to know about a pipeline comes from here and nowhere else: which attributes hold
a denoiser (Wan 2.2 has two), which are UNets, how the timestep is passed, how classifier-free guidance is
called (one batched call, or one call per branch), which solver kind the family samples with, where the
output lives, which blocks hold the attention a feature cache hooks, and which config fields a small model
must share with the large one to stand in for some of its steps.

An open registry: :func:`register_family` adds one (first match wins, the generic family is last).
Matching is by pipeline class name over the class's MRO, so subclasses of a known pipeline match too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import torch

from . import diffusers_versions


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
        batched_cfg: the pipeline stacks ``[uncond, cond]`` in the batch of one call (LTX, SD).
        unets: which of ``denoisers`` are UNets (DeepCache works on those only); the rest are transformers.
        solver_kind: ``"flow"`` (flow matching) or ``"vp"`` (epsilon / v prediction): what the family's
            checkpoints are trained for, and so which step-reduction solvers fit it; ``None``: read it from
            the pipeline's scheduler.
        output_field: the attribute of the pipeline's output holding the result (``frames`` or ``images``).
        attention_blocks: regex of the self-attention modules a feature cache such as TaylorSeer hooks
            (``None``: the cache's own default).
        passes_sigmas: the pipeline hands the scheduler its own sigma grid (``set_timesteps(sigmas=...)``), so
            a step-reduction solver must accept custom sigmas.
        cfg_scale_arg: the pipeline-call argument holding the classifier-free guidance scale (Flux's
            ``guidance_scale`` is a distilled embedding; its CFG scale is ``true_cfg_scale``).
        heads_config: the denoiser config field holding its attention head count (context parallelism
            splits heads across ranks, so the degree must divide both models' counts).
        masks_repeat_heads: its attention processors repeat one mask over every head (LTX's text mask), so
            under Ulysses context parallelism the mask can be cut to one head.
        cache_context: the pipeline's loop calls its denoiser inside ``cache_context`` (diffusers' feature
            caches keep their state per context, and most raise without one).
        current_timestep: the pipeline keeps the running step's timestep in ``pipe.current_timestep`` (what
            PyramidAttentionBroadcast's timestep callback reads).
        needs: the :mod:`.diffusers_versions` feature a pipeline of this family needs (older diffusers minors
            are refused in one line when the family is looked up); empty: every supported minor.
        note: one line on the family's calling convention, for humans.
    """

    name: str
    pipeline_pattern: str
    denoisers: tuple[str, ...]
    shared_config: tuple[str, ...]
    timestep_arg: tuple[str, int] = ("timestep", 1)
    same_class: bool = True
    separate_cfg_calls: bool = False
    batched_cfg: bool = False
    unets: tuple[str, ...] = ()
    solver_kind: str | None = "flow"
    output_field: str = "images"
    attention_blocks: str | None = None
    passes_sigmas: bool = False
    cfg_scale_arg: str = "guidance_scale"
    heads_config: str = "num_attention_heads"
    masks_repeat_heads: bool = False
    cache_context: bool = True
    current_timestep: bool = True
    needs: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        if not self.denoisers:
            raise ValueError(f"Family {self.name!r}: denoisers must name at least one pipeline attribute.")
        if self.solver_kind not in ("flow", "vp", None):
            raise ValueError(
                f"Family {self.name!r}: solver_kind={self.solver_kind!r} must be 'flow', 'vp' or None."
            )
        if self.separate_cfg_calls and self.batched_cfg:
            raise ValueError(f"Family {self.name!r}: CFG is either batched or one call per branch, not both.")
        if not set(self.unets) <= set(self.denoisers):
            raise ValueError(
                f"Family {self.name!r}: unets={self.unets} must be among denoisers={self.denoisers}."
            )

    def matches(self, pipe: Any) -> bool:
        names = [cls.__name__ for cls in type(pipe).__mro__]
        return any(re.fullmatch(self.pipeline_pattern, name) for name in names)

    def present_denoisers(self, pipe: Any) -> list[str]:
        return [name for name in self.denoisers if isinstance(getattr(pipe, name, None), torch.nn.Module)]

    def is_unet(self, attribute: str) -> bool:
        return attribute in self.unets


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


def family_for_class(pipeline_class: type, attributes: set[str]) -> Family:
    """The family of a pipeline class whose saved folder holds the denoiser ``attributes`` (no loading)."""
    names = [cls.__name__ for cls in pipeline_class.__mro__]
    for family in _FAMILIES:
        matches = any(re.fullmatch(family.pipeline_pattern, name) for name in names)
        if matches and set(family.denoisers) & attributes:
            return family
    searched = sorted({name for family in _FAMILIES for name in family.denoisers})
    raise ValueError(f"{pipeline_class.__name__} has no denoiser FlowBlending knows: looked for {searched}.")


def family_for(pipe: Any) -> Family:
    """The first registered family that matches ``pipe`` and finds a denoiser on it (refused in one line
    where the installed diffusers is older than the family needs)."""
    for family in _FAMILIES:
        if family.matches(pipe) and family.present_denoisers(pipe):
            if family.needs:
                diffusers_versions.require(family.needs, f"{type(pipe).__name__} ({family.name})")
            return family
    searched = sorted({name for family in _FAMILIES for name in family.denoisers})
    raise ValueError(
        f"{type(pipe).__name__} has no denoiser FlowBlending knows: looked for a torch module in "
        f"{searched}. Pass `denoisers=('<attribute>',)` naming the pipeline attribute that holds it, or "
        "register a Family for this pipeline with flowblending_accel.core.families.register_family."
    )


def _default_families() -> list[Family]:
    wan, ltx = _wan(), _ltx()
    return [
        _modular_wan(wan),
        wan,
        _modular_ltx(ltx),
        ltx,
        Family(
            name="flux",
            pipeline_pattern=r"Flux\w*Pipeline",
            denoisers=("transformer",),
            shared_config=(
                "in_channels",
                "out_channels",
                "patch_size",
                "joint_attention_dim",
                "pooled_projection_dim",
                "guidance_embeds",
            ),
            separate_cfg_calls=True,
            attention_blocks=r"(single_)?transformer_blocks\.\d+\.attn",
            passes_sigmas=True,
            cfg_scale_arg="true_cfg_scale",
            note="keyword call, timestep/1000; guidance distilled (one call per step) or true CFG with a "
            "negative prompt (two calls, conditional first)",
        ),
        Family(
            name="unet",
            pipeline_pattern=r"StableDiffusion\w*Pipeline|\w*XL\w*Pipeline",
            denoisers=("unet",),
            shared_config=(
                "in_channels",
                "out_channels",
                "cross_attention_dim",
                "addition_embed_type",
                "projection_class_embeddings_input_dim",
                "time_cond_proj_dim",
                "class_embed_type",
            ),
            batched_cfg=True,
            unets=("unet",),
            solver_kind="vp",
            note="UNet called with the timestep positionally: unet(latents, t, encoder_hidden_states=...)",
        ),
        Family(
            name="lcm",
            pipeline_pattern=r"LatentConsistency\w*Pipeline",
            denoisers=("unet",),
            shared_config=(
                "in_channels",
                "out_channels",
                "cross_attention_dim",
                "time_cond_proj_dim",
                "class_embed_type",
            ),
            unets=("unet",),
            solver_kind="vp",
            note="UNet with a guidance embedding (time_cond_proj_dim): one call per step, no CFG batch",
        ),
        Family(
            name="generic",
            pipeline_pattern=r".*Pipeline\w*|.*",
            denoisers=("transformer", "transformer_2", "unet"),
            shared_config=(
                "in_channels",
                "out_channels",
                "patch_size",
                "patch_size_t",
                "text_dim",
                "caption_channels",
                "joint_attention_dim",
                "pooled_projection_dim",
                "guidance_embeds",
            ),
            same_class=False,
            unets=("unet",),
            solver_kind=None,
            note="any pipeline whose denoiser is a module called with a `timestep` argument",
        ),
    ]


def _wan() -> Family:
    return Family(
        name="wan",
        pipeline_pattern=r"Wan\w*Pipeline",
        denoisers=("transformer", "transformer_2"),
        shared_config=(
            "in_channels",
            "out_channels",
            "patch_size",
            "text_dim",
            "image_dim",
            "pos_embed_seq_len",
        ),
        separate_cfg_calls=True,
        output_field="frames",
        attention_blocks=r"blocks\.\d+\.attn1",
        note="keyword call; split CFG (two calls per step); Wan 2.2 routes inside each expert",
    )


def _ltx() -> Family:
    return Family(
        name="ltx",
        pipeline_pattern=r"LTX\w*Pipeline",
        denoisers=("transformer",),
        shared_config=("in_channels", "out_channels", "patch_size", "patch_size_t", "caption_channels"),
        batched_cfg=True,
        output_field="frames",
        attention_blocks=r"transformer_blocks\.\d+\.attn1",
        passes_sigmas=True,
        masks_repeat_heads=True,
        note="keyword call; batched CFG; per-token timesteps (conditioning tokens at 0) in i2v/condition",
    )


# diffusers' modular pipelines (``ModularPipeline`` built from blocks) are classes of their own, declared here
# as families of their own: the same denoisers and pair rules as the classic pipeline of the model, but the
# loop is a block that calls the denoiser once per guider batch (conditional first), keeps no
# ``current_timestep``, returns a ``PipelineState`` (``videos``) and never resets its components' hooks after
# a call (the router closes a run when the next one starts, or when it is removed).
def _modular_wan(wan: Family) -> Family:
    return replace(
        wan,
        name="wan-modular",
        needs="modular_wan",
        pipeline_pattern=r"Wan\w*ModularPipeline",
        output_field="videos",
        cache_context=False,  # WanLoopDenoiser / Wan22LoopDenoiser call the transformer outside one
        current_timestep=False,
        note="diffusers' modular Wan 2.1 / 2.2 (WanBlocks, Wan22Blocks): keyword call, one call per guider "
        "batch; Wan22LoopDenoiser picks transformer or transformer_2 by boundary_ratio, routed inside each",
    )


def _modular_ltx(ltx: Family) -> Family:
    return replace(
        ltx,
        name="ltx-modular",
        needs="modular_ltx",
        pipeline_pattern=r"LTXModularPipeline",
        batched_cfg=False,
        separate_cfg_calls=True,  # the guider's batches, each in its own cache context
        output_field="videos",
        current_timestep=False,
        note="diffusers' modular LTX-Video (LTXBlocks): keyword call, one call per guider batch, each inside "
        "cache_context(<batch name>)",
    )


for _family in _default_families():
    register_family(_family)
