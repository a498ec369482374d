"""The small model follows the pipeline.

diffusers users wrap first and move later: ``pipe.to("cuda")``, ``pipe.to(dtype=torch.bfloat16)``,
``enable_model_cpu_offload()``, ``enable_group_offload(...)``,
``pipe.transformer.enable_layerwise_casting(...)``, ``enable_attention_slicing()``,
``enable_xformers_memory_efficient_attention()``, ``fuse_qkv_projections()``, ``enable_freeu(...)``. All
of them act on the pipeline's registered components, and the small model is not one. So at apply time and
again at every run start, :class:`Follower` gives the small model the state the large one has now, read
from the large model itself (whichever order the user did things in):

* device (unless an accelerator manages placement, like the offload memory mode) and compute dtype;
* layerwise casting (same storage and compute dtype), group offloading (same config);
* accelerate's model CPU offload: the small model gets its own offload hook to the same execution device,
  and goes back to the CPU at the end of every run;
* attention slicing, xformers attention, fused QKV projections and FreeU, on and off;
* context parallelism (diffusers' ``enable_parallelism``): the small model gets the large one's kind and
  degree on the large one's mesh, from a config of its own; both models' masks are cut to one head under
  Ulysses where the family repeats one mask over every head (diffusers#14316, a patch held while they run
  split: :func:`.patches.share_mask_heads`). Released with the router.

What cannot be followed (a small model on the meta device) is left to the placement check, which refuses it.
"""

from __future__ import annotations

from typing import Any

import torch

from . import diffusers_internals, patches
from .compat import check_context_parallel, compute_dtype_of, device_of, dtype_of
from .families import Family


class Follower:
    """Keeps one small model in step with one large model; undoes what it attached on :meth:`release`."""

    def __init__(self, family: Family | None = None) -> None:
        self._offload_hook = None  # accelerate's hook we gave the small model, if any
        self._parallel = False  # whether we enabled the small model's context parallelism
        self._mask_heads: list[Any] = []  # parallel configs whose masks we cut to one head (patches)
        self._family = family

    def sync(self, large: Any, small: Any, placement: bool = True) -> None:
        if not (isinstance(large, torch.nn.Module) and isinstance(small, torch.nn.Module)):
            return
        if device_of(small) is not None and device_of(small).type == "meta":
            return  # nothing to copy from: the placement check names the fix
        _layerwise_casting(large, small)
        _compute_dtype(large, small)
        if placement:
            self._placement(large, small)
        _attention_processors(large, small)
        _fused_projections(large, small)
        _freeu(large, small)
        self._context_parallel(large, small)  # last: it configures the processors the steps above set

    def after_run(self) -> None:
        """Under model CPU offload the small model leaves the accelerator when a run ends."""
        if self._offload_hook is not None:
            self._offload_hook.offload()

    def release(self, small: Any) -> None:
        self._share_mask_heads([])
        if self._parallel:
            diffusers_internals.disable_context_parallel(small)
            self._parallel = False
        if self._offload_hook is not None:
            from accelerate.hooks import remove_hook_from_module

            self._offload_hook.offload()
            remove_hook_from_module(small)
            self._offload_hook = None

    def _context_parallel(self, large: torch.nn.Module, small: torch.nn.Module) -> None:
        config = diffusers_internals.context_parallel_of(large)
        if config is None:
            self._share_mask_heads([])
            if self._parallel:  # the large model left context parallelism: so does the small one
                diffusers_internals.disable_context_parallel(small)
                self._parallel = False
            return
        if diffusers_internals.parallel_of(small) is None:  # one the user split is theirs
            if self._family is not None:  # before the small model changes: a degree it cannot take
                check_context_parallel(large, small, self._family, "the large model")
            diffusers_internals.enable_context_parallel_like(small, config)
            self._parallel = True
        if self._family is not None and self._family.masks_repeat_heads:
            self._share_mask_heads([diffusers_internals.parallel_of(model) for model in (large, small)])

    def _share_mask_heads(self, configs: list[Any]) -> None:
        """Hold the mask-head patch for exactly ``configs`` (the models' parallel configs now): a config a
        model no longer runs with is let go (diffusers#14316, see :mod:`.patches`)."""
        kept = [held for held in self._mask_heads if any(held is config for config in configs)]
        for held in self._mask_heads:
            if not any(held is config for config in kept):
                patches.unshare_mask_heads(held)
        self._mask_heads = kept
        for config in configs:
            if config is not None and not any(config is held for held in self._mask_heads):
                patches.share_mask_heads(config)
                self._mask_heads.append(config)

    def _placement(self, large: torch.nn.Module, small: torch.nn.Module) -> None:
        offload = getattr(large, "_hf_hook", None)
        if offload is not None and getattr(offload, "execution_device", None) is not None:
            if self._offload_hook is None and not hasattr(small, "_hf_hook"):
                from accelerate import cpu_offload_with_hook

                small.to("cpu")
                _, self._offload_hook = cpu_offload_with_hook(small, offload.execution_device)
            return
        config = diffusers_internals.group_offloading_of(large)
        if config is not None:
            if diffusers_internals.group_offloading_of(small) is None:
                small.enable_group_offload(
                    onload_device=config.onload_device,
                    offload_device=config.offload_device,
                    offload_type=getattr(config.offload_type, "value", config.offload_type),
                    num_blocks_per_group=config.num_blocks_per_group,
                    non_blocking=config.non_blocking,
                    use_stream=config.stream is not None,
                    record_stream=config.record_stream,
                    low_cpu_mem_usage=config.low_cpu_mem_usage,
                    offload_to_disk_path=config.offload_to_disk_path,
                )
            return
        large_device = device_of(large)
        if large_device is not None and device_of(small) != large_device and not hasattr(small, "_hf_hook"):
            small.to(large_device)


def _layerwise_casting(large: torch.nn.Module, small: torch.nn.Module) -> None:
    casting = diffusers_internals.layerwise_casting_of(large)
    if (
        casting is None
        or diffusers_internals.layerwise_casting_of(small) is not None
        or not hasattr(small, "enable_layerwise_casting")
    ):
        return
    storage, compute = casting
    # The layers casting skips (norms, embeddings, the projections in and out) keep the dtype the large
    # model's have (``pipe.to(dtype=...)`` before the casting): the small model is put in it first, or its
    # skipped layers would meet inputs of another dtype.
    skipped = next(
        (p.dtype for p in large.parameters() if p.is_floating_point() and p.dtype != storage), compute
    )
    if dtype_of(small) != skipped:
        small.to(dtype=skipped)
    small.enable_layerwise_casting(storage_dtype=storage, compute_dtype=compute)


def _compute_dtype(large: torch.nn.Module, small: torch.nn.Module) -> None:
    wanted = compute_dtype_of(large)
    if (
        wanted is None
        or diffusers_internals.layerwise_casting_of(small) is not None
        or diffusers_internals.group_offloading_of(small)
    ):
        return
    if dtype_of(small) is not None and dtype_of(small) != wanted:
        small.to(dtype=wanted)


def _processor_kinds(module: torch.nn.Module) -> dict[str, Any]:
    processors = getattr(module, "attn_processors", None)
    return dict(processors) if isinstance(processors, dict) else {}


def _attention_processors(large: torch.nn.Module, small: torch.nn.Module) -> None:
    large_procs, small_procs = _processor_kinds(large), _processor_kinds(small)
    if not large_procs or not small_procs:
        return
    kind = _shared_kind(large_procs.values())
    mine = _shared_kind(small_procs.values())
    if kind == "SlicedAttnProcessor" and hasattr(small, "set_attention_slice"):
        wanted = _slice_size(large, large_procs)  # compared by value: a new slice size is followed too
        if mine != kind or _slice_size(small, small_procs) != wanted:
            small.set_attention_slice(wanted)
        return
    if kind == "XFormersAttnProcessor" and hasattr(small, "set_use_memory_efficient_attention_xformers"):
        op = getattr(next(iter(large_procs.values())), "attention_op", None)
        if mine != kind or getattr(next(iter(small_procs.values())), "attention_op", None) != op:
            small.set_use_memory_efficient_attention_xformers(True, op)
        return
    if kind == mine:
        return
    if mine == "SlicedAttnProcessor" and hasattr(small, "set_attention_slice"):
        small.set_attention_slice(None)  # slicing turned off on the large model
    elif mine == "XFormersAttnProcessor" and hasattr(small, "set_use_memory_efficient_attention_xformers"):
        small.set_use_memory_efficient_attention_xformers(False)


def _shared_kind(processors) -> str | None:
    kinds = {type(processor).__name__ for processor in processors}
    return kinds.pop() if len(kinds) == 1 else None


def _slice_size(large: torch.nn.Module, processors: dict[str, Any]) -> Any:
    """``"max"``, ``"auto"`` or one int: what ``set_attention_slice`` was given on the large model."""
    sizes = [processor.slice_size for processor in processors.values()]
    if set(sizes) == {1}:
        return "max"
    heads = [module.sliceable_head_dim for module in large.modules() if hasattr(module, "sliceable_head_dim")]
    if heads and sizes == [head // 2 for head in heads]:
        return "auto"
    return sizes[0]


def _fused(module: torch.nn.Module) -> bool:
    return any(getattr(sub, "fused_projections", False) for sub in module.modules())


def _fused_projections(large: torch.nn.Module, small: torch.nn.Module) -> None:
    fused = _fused(large)
    if fused == _fused(small):
        return
    if fused and hasattr(small, "fuse_qkv_projections"):
        small.fuse_qkv_projections()
    elif not fused and hasattr(small, "unfuse_qkv_projections"):
        small.unfuse_qkv_projections()


FREEU = ("s1", "s2", "b1", "b2")


def _freeu_of(module: torch.nn.Module) -> tuple | None:
    blocks = getattr(module, "up_blocks", None)
    if not blocks:
        return None
    values = tuple(getattr(blocks[0], name, None) for name in FREEU)
    return values if any(value is not None for value in values) else None


def _freeu(large: torch.nn.Module, small: torch.nn.Module) -> None:
    if not hasattr(small, "enable_freeu"):
        return
    wanted = _freeu_of(large)
    if wanted == _freeu_of(small):
        return
    if wanted is None:
        small.disable_freeu()
    else:
        small.enable_freeu(**dict(zip(FREEU, wanted, strict=True)))
