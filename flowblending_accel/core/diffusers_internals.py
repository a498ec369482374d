"""The one module that touches diffusers' hook registry internals, so a diffusers change hits one file.

A model's hooks live in ``module._diffusers_hook`` (a ``HookRegistry``), with more registries on its
submodules (block-level cache hooks). Stateful hooks keep one state per cache-context name in a
``StateManager``; ``reset_state`` drops those states *and* the current context, so a reset inside a running
``cache_context`` must put the context back, or the next block call raises "No cache context is set".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers.hooks import HookRegistry
from diffusers.hooks.hooks import ModelHook, StateManager

from . import diffusers_versions

if diffusers_versions.has("cache_context"):
    from diffusers.hooks.hooks import CacheContext
else:  # the context is the call's name alone ("cond", "uncond" ...), which set_context takes as it is
    CacheContext = str

REGISTRY_ATTRIBUTE = "_diffusers_hook"


def registries(module: torch.nn.Module) -> list[HookRegistry]:
    """Every hook registry on ``module`` and its submodules (outermost first); none for a plain callable."""
    if not isinstance(module, torch.nn.Module):
        return []
    found = []
    for sub in module.modules():
        registry = getattr(sub, REGISTRY_ATTRIBUTE, None)
        if registry is not None:
            found.append(registry)
    return found


def stateful_hooks(module: torch.nn.Module) -> Iterator[tuple[HookRegistry, ModelHook]]:
    for registry in registries(module):
        for name in reversed(registry._hook_order):
            hook = registry.hooks[name]
            if hook._is_stateful:
                yield registry, hook


def reset_cache_state(
    module: torch.nn.Module, context: CacheContext | None = None, skip: Iterable[ModelHook] = ()
) -> None:
    """Reset every stateful hook of ``module`` except ``skip``, then re-apply ``context`` (if any).

    This is what "the model starts a fresh segment" means for feature caches: no residual, Taylor factor
    or call counter from before the gap survives.
    """
    skipped = set(map(id, skip))
    for registry, hook in stateful_hooks(module):
        if id(hook) not in skipped:
            hook.reset_state(registry._module_ref)
    if context is not None:
        set_cache_context(module, context)


def set_cache_context(module: torch.nn.Module, context: CacheContext | None) -> None:
    """Give ``context`` to every stateful hook's ``StateManager`` under ``module`` (``None`` clears it)."""
    for manager in _state_managers(module):
        manager.set_context(context)


@contextmanager
def cache_context(module: torch.nn.Module, context: CacheContext | None):
    """Enter ``context`` on ``module``'s hooks for one call, like ``CacheMixin.cache_context`` for any
    module."""
    # Any registry, not the root's: before diffusers 0.41 enable_cache gives only the blocks one.
    if context is None or not registries(module):
        yield
        return
    set_cache_context(module, context)
    try:
        yield
    finally:
        set_cache_context(module, None)


def current_context(manager: StateManager) -> CacheContext | None:
    """The cache context ``manager`` holds now (``None`` outside ``cache_context``), without raising."""
    return manager._context if diffusers_versions.has("cache_context") else manager._current_context


def context_name(context: CacheContext | None) -> str | None:
    """The name ("cond", "uncond" ...) of a cache context, whichever form this diffusers gives it in."""
    return context if context is None or isinstance(context, str) else context.name


def refresh_child_registries(module: torch.nn.Module) -> None:
    """After ``enable_cache``/``disable_cache``: let every registry under ``module`` list its child registries
    afresh at the next cache context.

    diffusers 0.38-0.40 list them at a registry's first ``cache_context`` and never again, so the hooks of a
    cache enabled after a pipeline run never get the context: the uncond call reads the cond call's state
    (0.36-0.37 walk the modules on every call; 0.41 refreshes the list itself)."""
    if diffusers_versions.has("enable_cache_refreshes_registries"):
        return
    for registry in registries(module):
        if getattr(registry, "_child_registries_cache", None) is not None:
            registry._child_registries_cache = None


def _state_managers(module: torch.nn.Module) -> Iterator[StateManager]:
    for _, hook in stateful_hooks(module):
        for value in vars(hook).values():
            if isinstance(value, StateManager):
                yield value


def cached_states(module: torch.nn.Module) -> int:
    """How many per-context cache states ``module``'s stateful hooks hold (0 after a reset)."""
    return sum(len(manager._state_cache) for manager in _state_managers(module))


def cache_states(module: torch.nn.Module) -> Iterator[Any]:
    """Every per-context state object ``module``'s stateful hooks hold now."""
    for manager in _state_managers(module):
        yield from manager._state_cache.values()


def make_states_with(module: torch.nn.Module, state_type: type, factory: Callable[[], Any]) -> None:
    """From now on, new states of ``state_type`` under ``module`` come from ``factory`` (e.g. to start a
    fresh MagCache state at the pipeline's loop iteration instead of 0)."""
    for manager in _state_managers(module):
        if manager._state_cls is state_type:
            manager._state_cls = factory


def hooks_of_type(module: torch.nn.Module, hook_type: type) -> list[tuple[str, ModelHook]]:
    """``(name, hook)`` pairs registered directly on ``module`` whose hook is a ``hook_type``."""
    registry = getattr(module, REGISTRY_ATTRIBUTE, None)
    if registry is None:
        return []
    return [
        (name, registry.hooks[name])
        for name in registry._hook_order
        if isinstance(registry.hooks[name], hook_type)
    ]


@contextmanager
def beneath_accelerate(module: torch.nn.Module):
    """Change ``module``'s diffusers hooks underneath an accelerate hook (``enable_model_cpu_offload``).

    accelerate wraps ``module.forward`` and keeps the forward it wrapped; every pipeline call ends by removing
    and re-adding its hooks, which restores that kept forward. A diffusers hook registered on top of
    accelerate's would be dropped by that (and one removed from underneath would come back), so the
    accelerate hook is taken off for the change and put back on top of it.
    """
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        yield
        return
    from accelerate.hooks import add_hook_to_module, remove_hook_from_module

    remove_hook_from_module(module)
    try:
        yield
    finally:
        add_hook_to_module(module, hook)


def register_outermost(module: torch.nn.Module, hook: ModelHook, name: str) -> None:
    """Register ``hook`` last, i.e. outermost among diffusers hooks: it sees every call before any cache
    hook of ``module`` (accelerate's offload hook, if any, stays on top of it)."""
    with beneath_accelerate(module):
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)


def remove(module: torch.nn.Module, name: str) -> None:
    """Remove hook ``name``; when it was the last hook, leave the module exactly as it was before any."""
    registry = getattr(module, REGISTRY_ATTRIBUTE, None)
    if registry is None:
        return
    with beneath_accelerate(module):
        registry.remove_hook(name, recurse=False)
        if registry.hooks:
            return
        # The registry leaves the class forward behind as an instance attribute: drop it and the registry.
        forward = module.__dict__.get("forward")
        if getattr(forward, "__func__", None) is type(module).forward:
            del module.__dict__["forward"]
        delattr(module, REGISTRY_ATTRIBUTE)


def _first_hook(module: torch.nn.Module, name: str) -> ModelHook | None:
    for registry in registries(module):
        if name in registry.hooks:
            return registry.hooks[name]
    return None


def layerwise_casting_of(module: torch.nn.Module) -> tuple[torch.dtype, torch.dtype] | None:
    """``(storage dtype, compute dtype)`` when ``enable_layerwise_casting`` is on ``module``, else None."""
    hook = _first_hook(module, "layerwise_casting")
    return (hook.storage_dtype, hook.compute_dtype) if hook is not None else None


def group_offloading_of(module: torch.nn.Module) -> Any | None:
    """The ``GroupOffloadingConfig`` of ``enable_group_offload`` on ``module``, else None."""
    hook = _first_hook(module, "group_offloading")
    return getattr(hook, "config", None) if hook is not None else None


_BACKEND_FIELD = "_attention_backend"  # diffusers' per-processor attention backend
_UNSET = object()


def attention_backend_states(model: torch.nn.Module) -> list[tuple[Any, Any]]:
    """``(processor, its own backend value or unset)`` for every attention processor of ``model`` that takes
    a backend: what :func:`restore_attention_backends` puts back exactly (a compiled graph guards on it)."""
    states = []
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, _BACKEND_FIELD):
            states.append((processor, vars(processor).get(_BACKEND_FIELD, _UNSET)))
    return states


def restore_attention_backends(states: Iterable[tuple[Any, Any]]) -> None:
    for processor, value in states:
        if value is _UNSET:
            vars(processor).pop(_BACKEND_FIELD, None)
        else:
            setattr(processor, _BACKEND_FIELD, value)


def uncompiled(model: Any) -> Any:
    """The module a ``torch.compile``'d model wraps (its attributes and config live there), else ``model``."""
    return getattr(model, "_orig_mod", model)


# Context parallelism (``model.enable_parallelism``): diffusers keeps the config in ``model._parallel_config``
# and on every attention processor, the split/gather hooks in the hook registry, and has no undo.
_PARALLEL_FIELD = "_parallel_config"


def context_parallel_of(model: torch.nn.Module) -> Any | None:
    """The ``ContextParallelConfig`` ``model`` runs with (set up: its mesh is known), or None."""
    parallel = getattr(model, _PARALLEL_FIELD, None)
    return getattr(parallel, "context_parallel_config", None)


def parallel_of(model: torch.nn.Module) -> Any | None:
    """Any diffusers parallelism ``model`` runs with (context or tensor parallel), or None."""
    return getattr(model, _PARALLEL_FIELD, None)


def context_parallel_plan(model: torch.nn.Module) -> Any | None:
    """The model class's context-parallel plan (where inputs are split and outputs gathered), or None."""
    return getattr(model, "_cp_plan", None)


_CREATED_REGISTRIES = "_flowblending_cp_registries"  # on a model: the submodules enabling gave a registry


def enable_context_parallel(model: torch.nn.Module, config: Any) -> None:
    """``model.enable_parallelism(config=config)``, undoable exactly by :func:`disable_context_parallel`; a
    failure leaves the model as it was (diffusers would leave its config set, refusing a second try)."""
    model = uncompiled(model)
    bare = {name for name, module in model.named_modules() if not hasattr(module, REGISTRY_ATTRIBUTE)}
    before = vars(model).get(_PARALLEL_FIELD)
    try:
        model.enable_parallelism(config=config)
    except BaseException:
        if vars(model).get(_PARALLEL_FIELD) is not before:  # diffusers set its config before it failed
            disable_context_parallel(model, bare)
        raise
    created = [
        name for name, module in model.named_modules() if name in bare and hasattr(module, REGISTRY_ATTRIBUTE)
    ]
    setattr(model, _CREATED_REGISTRIES, created)


def enable_context_parallel_like(model: torch.nn.Module, like: Any) -> None:
    """``model.enable_parallelism`` with the kind and degree of ``like`` (another model's set-up config), on
    ``like``'s mesh: the same ranks split the same sequence the same way. A config of its own, since
    diffusers fills a config's state in when it sets it up."""
    from diffusers import ContextParallelConfig

    # Checked at apply time too; here for a router without a family (no pair checks) whose large model was
    # split later: ``like`` has no mesh to share before 0.38.
    diffusers_versions.require("context_parallel", "the small model following the large one's parallelism")

    config = ContextParallelConfig(
        ring_degree=like.ring_degree,
        ulysses_degree=like.ulysses_degree,
        convert_to_fp32=like.convert_to_fp32,
        rotate_method=like.rotate_method,
        ulysses_anything=like.ulysses_anything,
        ring_anything=like.ring_anything,
        mesh=like._mesh,
    )
    enable_context_parallel(model, config)


def context_parallel_group(model: torch.nn.Module) -> Any | None:
    """The process group whose ranks each hold one shard of ``model``'s sequence (ring x Ulysses), or None
    while it runs whole."""
    config = context_parallel_of(uncompiled(model))
    mesh = getattr(config, "_flattened_mesh", None)  # diffusers flattens (ring, ulysses) when it sets up
    return mesh.get_group() if mesh is not None else None


@contextmanager
def outside_the_split(model: torch.nn.Module):
    """Change ``model``'s hooks beneath its context-parallel split/gather hooks: they are taken off for the
    block and put back on top (the same config, so no new mesh). A hook registered later runs outside the
    earlier ones, so a cache enabled on a split model would see the whole sequence at its first block while
    the block computes one shard; beneath the split it sees the shard. Changes made here, enabling a cache
    and disabling it, nest like brackets with the split (another library's forward wrapper too)."""
    model = uncompiled(model)
    config, plan = context_parallel_of(model), context_parallel_plan(model)
    if config is None or plan is None:
        yield
        return
    from diffusers.hooks.context_parallel import apply_context_parallel, remove_context_parallel

    remove_context_parallel(model, plan)
    try:
        yield
    finally:
        apply_context_parallel(model, config, plan)


def disable_context_parallel(model: torch.nn.Module, created: Iterable[str] | None = None) -> None:
    """Undo :func:`enable_context_parallel`: its split/gather hooks, the registries it gave submodules, the
    config on the model and its processors (the mesh and its process groups stay; other models share them)."""
    from diffusers.hooks.context_parallel import remove_context_parallel

    model = uncompiled(model)
    plan = context_parallel_plan(model)
    if plan is not None:  # a model without a plan never got hooks
        remove_context_parallel(model, plan)
    created = set(created if created is not None else vars(model).pop(_CREATED_REGISTRIES, ()))
    for name, module in model.named_modules():
        registry = getattr(module, REGISTRY_ATTRIBUTE, None)
        if name in created and registry is not None and not registry.hooks:
            delattr(module, REGISTRY_ATTRIBUTE)
        processor = getattr(module, "processor", None)
        if processor is not None and _PARALLEL_FIELD in vars(processor):
            delattr(processor, _PARALLEL_FIELD)  # back to the class's None
    if _PARALLEL_FIELD in vars(model):
        delattr(model, _PARALLEL_FIELD)


# The attention backend registry: diffusers looks each backend's function up in it on every attention call,
# and has no public way to wrap one (the patches module's mask-head fix does, for diffusers#14316). Each
# backend function receives the calling processor's parallel config under this keyword.
ATTENTION_PARALLEL_ARGUMENT = "_parallel_config"


def attention_backend_functions() -> dict[Any, Callable[..., Any]]:
    """diffusers' registry of attention backend functions by name (the dict itself, to change in place)."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    return _AttentionBackendRegistry._backends


# FirstBlockCache: the hook on a model's first block thresholds how much that block's residual changed since
# the last computed call, in this method (the patches module makes it decide across the ranks of a split).
FIRST_BLOCK_CACHE_DECISION = "_should_compute_remaining_blocks"


def first_block_cache_heads(model: torch.nn.Module) -> list[ModelHook]:
    """The FirstBlockCache head hooks under ``model`` (one per ``enable_cache``)."""
    from diffusers.hooks.first_block_cache import FBCHeadBlockHook

    return [
        hook
        for registry in registries(model)
        for hook in registry.hooks.values()
        if isinstance(hook, FBCHeadBlockHook)
    ]


def first_block_cache_reference(hook: ModelHook) -> tuple[torch.Tensor | None, float]:
    """``(the first block's residual at the last computed call, or None before one; the threshold)`` of a
    FirstBlockCache head hook, in the cache context running now."""
    return hook.state_manager.get_state().head_block_residual, hook.threshold
