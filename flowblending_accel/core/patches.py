"""Every change this project makes to another library's objects or globals, each beside its undo.

Nothing here runs at import: each patch is applied where a feature needs it and undone when that feature is
removed. A patch on one object (a pipeline's class, a model's forward) is undone by its pair. A patch on
process-wide state (a diffusers registry, a torch setting) is held: it is in place while at least one holder
needs it, undone when the last one lets go, and scoped so it changes nothing for objects the project did not
touch wherever that can be done (each says its scope). Each says what it changes, why, what retires it
upstream, what undoes it and who applies it.

Patch (what it changes; who applies it; its undo):

1. :func:`own_pipeline_call`: one pipeline's class; ``accelerators.calls``, for a stack that owns
   ``num_inference_steps``; :func:`release_pipeline_call`.
2. :func:`share_mask_heads`: diffusers' attention backend registry (held); ``core.follow``, for context
   parallelism on a family with ``masks_repeat_heads`` (LTX); :func:`unshare_mask_heads`.
3. :func:`raise_recompile_limit`: ``torch._dynamo.config.recompile_limit`` (held); ``accelerators.compile``
   with a cache in the stack; :func:`restore_recompile_limit`.
4. :func:`shim_forward`: one model's ``forward``; ``accelerators.deepcache`` (and ``targets.memory`` on a
   meta-device copy of its own); :func:`unshim_forward`.
5. :func:`silenced`, the one silencer: other libraries' loggers (a filter, or a level); the command line, the
   tools' programs and a few library calls around one noisy call; leaving the block.
6. :func:`calling_pipeline`: nothing (it reads the call stack); ``core.router``; nothing to undo.
7. :func:`decide_across_ranks`: the skip decision of the FirstBlockCache hooks on one model;
   ``accelerators.caches``, for ``fbc``; :func:`decide_alone`.

Private attributes of diffusers are read through :mod:`.diffusers_internals` only; what the patches still
need from it: the attention backend registry (``_AttentionBackendRegistry._backends``: diffusers has no
public way to wrap a backend), the name of the parallel config a backend receives (``_parallel_config``), and
FirstBlockCache's decision method, reference residual and the group a model's sequence is split over.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

_LOCK = threading.RLock()  # process-wide patches change shared state: one change at a time


class _Holders:
    """Who needs a process-wide patch now, by identity, each with a value (a patch stays while one does)."""

    def __init__(self) -> None:
        self._held: list[tuple[Any, Any]] = []

    def holds(self, holder: Any) -> bool:
        return any(held is holder for held, _ in self._held)

    def add(self, holder: Any, value: Any = None) -> bool:
        """Add ``holder``; True when it is the first (the patch goes on)."""
        if self.holds(holder):
            return False
        self._held.append((holder, value))
        return len(self._held) == 1

    def remove(self, holder: Any) -> bool:
        """Remove ``holder``; True when it was the last (the patch comes off)."""
        kept = [(held, value) for held, value in self._held if held is not holder]
        if len(kept) == len(self._held):
            return False
        self._held = kept
        return not kept

    def values(self) -> list[Any]:
        return [value for _, value in self._held]


# --- 1. A pipeline's call arguments --------------------------------------------------------------------
# What: ``pipe.__class__`` becomes a subclass of the same name whose ``__call__`` rewrites the call's
#   arguments (``rewrite(signature, args, kwargs)``) before the pipeline's own ``__call__`` runs.
# Why: a step reduction must run its own ``num_inference_steps`` whatever the caller passes, and a
#   pipeline's ``__call__`` is looked up on its class (an instance attribute is never called); diffusers'
#   hooks act on modules, inside the loop, after the step count is fixed.
# Retired by: a pipeline-level call hook in diffusers (none in 0.42; no upstream issue known).
# Undo: release_pipeline_call puts the original class back (the same class object); the subclass holds no
#   state, and the rewrite lives here, not on the pipeline.
_REWRITES: weakref.WeakKeyDictionary[Any, Callable] = weakref.WeakKeyDictionary()
_SUBCLASSES: dict[type, type] = {}
_BASE = "flowblending_base_class"  # on our subclasses only: the class they stand in for


def own_pipeline_call(pipe: Any, rewrite: Callable[..., tuple[tuple, dict]]) -> None:
    """From now on ``pipe(...)`` runs with ``rewrite(signature, args, kwargs)``'s arguments (``args``
    without ``self``; ``signature`` the pipeline's own ``__call__``'s)."""
    if pipeline_call_owned(pipe):
        raise RuntimeError("this pipeline's call is already rewritten; release it first.")
    _REWRITES[pipe] = rewrite
    pipe.__class__ = _subclass_of(type(pipe))


def release_pipeline_call(pipe: Any) -> None:
    """Give ``pipe`` its own class back (a no-op when its call is not rewritten)."""
    base = vars(type(pipe)).get(_BASE)
    if base is not None:
        pipe.__class__ = base
    _REWRITES.pop(pipe, None)


def pipeline_call_owned(pipe: Any) -> bool:
    return _BASE in vars(type(pipe))


def _subclass_of(base: type) -> type:
    if base not in _SUBCLASSES:
        import inspect

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            rewrite = _REWRITES.get(self)  # none for a copy made while owned: it runs as its class would
            if rewrite is not None:
                args, kwargs = rewrite(inspect.signature(base.__call__), args, kwargs)
            return base.__call__(self, *args, **kwargs)

        __call__.__doc__ = base.__call__.__doc__
        namespace = {
            "__call__": __call__,
            "__module__": base.__module__,
            "__qualname__": base.__qualname__,
            "__doc__": base.__doc__,
            _BASE: base,
        }
        _SUBCLASSES[base] = type(base.__name__, (base,), namespace)
    return _SUBCLASSES[base]


# --- 2. One mask head under Ulysses attention (diffusers#14316) ----------------------------------------
# What: every backend in diffusers' attention backend registry is wrapped; the wrapper cuts a dense 4-d
#   mask to its first head when the call's parallel config is held here and splits heads (Ulysses > 1).
# Why: Ulysses attention in diffusers 0.42 gathers a mask's key axis but keeps all its heads while the query
#   has ``heads / degree`` of them, so a masked attention (LTX's text mask) fails. A family whose
#   processors repeat one mask over every head loses nothing when the mask is one head that broadcasts.
# Retired by: diffusers#14317 (the fix of #14316, pending as of 0.42.1); once released, drop the patch for
#   the versions that have it.
# Scope: process-wide (the registry is one dict), held per parallel config: the wrapper passes every other
#   call through untouched, and with no holder left the original functions are back in the registry.
# Undo: unshare_mask_heads; the last one puts each original function back (the same object), unless
#   someone replaced our wrapper since (theirs stays; ours inside it passes everything through).
_MASK_HEADS = _Holders()
_WRAPPED: dict[str, tuple[Callable, Callable]] = {}  # backend name -> (diffusers' function, our wrapper)


def share_mask_heads(parallel_config: Any) -> None:
    """Cut the masks of attention run under ``parallel_config`` (a model's diffusers parallel config) to
    one head while it splits heads (Ulysses); idempotent per config."""
    with _LOCK:
        if _MASK_HEADS.add(parallel_config):
            _wrap_attention_backends()


def unshare_mask_heads(parallel_config: Any) -> None:
    """Undo :func:`share_mask_heads` for ``parallel_config`` (a no-op for one not shared)."""
    with _LOCK:
        if _MASK_HEADS.remove(parallel_config):
            _unwrap_attention_backends()


def _wrap_attention_backends() -> None:
    from . import diffusers_internals

    backends = diffusers_internals.attention_backend_functions()
    for name, function in list(backends.items()):
        wrapper = _one_mask_head(function)
        backends[name] = wrapper
        _WRAPPED[name] = (function, wrapper)


def _unwrap_attention_backends() -> None:
    from . import diffusers_internals

    backends = diffusers_internals.attention_backend_functions()
    for name, (function, wrapper) in _WRAPPED.items():
        if backends.get(name) is wrapper:
            backends[name] = function
    _WRAPPED.clear()


def _one_mask_head(function: Callable[..., Any]) -> Callable[..., Any]:
    import torch

    from . import diffusers_internals

    @functools.wraps(function)
    def attend(*args: Any, **kwargs: Any) -> Any:
        mask = kwargs.get("attn_mask")
        parallel = kwargs.get(diffusers_internals.ATTENTION_PARALLEL_ARGUMENT)
        if (  # only a held config's dense mask (a flex BlockMask passes untouched)
            isinstance(mask, torch.Tensor)
            and mask.ndim == 4
            and mask.shape[1] > 1
            and _MASK_HEADS.holds(parallel)
            and parallel.context_parallel_config.ulysses_degree > 1
        ):
            kwargs["attn_mask"] = mask[:, :1]
        return function(*args, **kwargs)

    return attend


# --- 3. Dynamo's recompile limit ------------------------------------------------------------------------
# What: ``torch._dynamo.config.recompile_limit`` is raised to the largest minimum held.
# Why: a cache's hooks inside compiled blocks make dynamo compile a variant per context name, head or tail
#   block and state length; two models and two CFG branches pass the default limit of 8, and the blocks past
#   it run eagerly, unnoticed.
# Retired by: nothing upstream; the limit is a setting, and this is the only way to set it per process.
# Scope: process-wide and one number, so not scoped to our models: while held, another compiled region
#   that passes 8 variants gets more compiled ones where it would have run eagerly. Held: the value before
#   the first holder comes back after the last.
# Undo: restore_recompile_limit.
_RECOMPILE = _Holders()
_RECOMPILE_BEFORE: list[int] = []  # the limit before the first holder


def raise_recompile_limit(holder: Any, minimum: int) -> None:
    """Keep dynamo's recompile limit at least ``minimum`` while ``holder`` needs it."""
    import torch

    with _LOCK:
        if _RECOMPILE.add(holder, minimum):
            _RECOMPILE_BEFORE.append(torch._dynamo.config.recompile_limit)
        torch._dynamo.config.recompile_limit = max(_RECOMPILE_BEFORE[0], *_RECOMPILE.values())


def restore_recompile_limit(holder: Any) -> None:
    """``holder`` no longer needs the raised limit; the last one puts the limit back."""
    import torch

    with _LOCK:
        if _RECOMPILE.remove(holder):
            torch._dynamo.config.recompile_limit = _RECOMPILE_BEFORE.pop()
        elif _RECOMPILE_BEFORE:
            torch._dynamo.config.recompile_limit = max(_RECOMPILE_BEFORE[0], *_RECOMPILE.values())


# --- 4. A shim on one model's forward -------------------------------------------------------------------
# What: ``model.forward`` (an instance attribute) becomes ``shim(model.forward)``.
# Why: DeepCache's helper replaces a UNet's forward and reads the timestep from positional slot 1 only,
#   while diffusers pipelines pass it by keyword; the shim moves it (``accelerators.deepcache``). And a text
#   encoder the memory plan builds on the meta device cannot run, so its forward answers with empty outputs
#   of the right shapes (``targets.memory``: the project's own throwaway copy, never unshimmed).
# Retired by: DeepCache reading a keyword timestep (no upstream issue known; DeepCache 0.1.1 does not).
# Undo: unshim_forward leaves the model's own attributes as they were: its ``forward`` attribute back, or
#   none when it had none (the class's forward then serves again).
_SHIMMED: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()  # model -> its own forward
_NONE = object()  # the model had no forward of its own


def shim_forward(model: Any, shim: Callable[[Callable], Callable]) -> None:
    """``model.forward`` becomes ``shim(model.forward)`` until :func:`unshim_forward`."""
    if model in _SHIMMED:
        raise RuntimeError(f"{type(model).__name__}'s forward is already shimmed; unshim it first.")
    _SHIMMED[model] = vars(model).get("forward", _NONE)
    model.forward = shim(model.forward)


def unshim_forward(model: Any) -> None:
    """Undo :func:`shim_forward` (a no-op for a model not shimmed)."""
    own = _SHIMMED.pop(model, None)
    if own is _NONE:
        del model.forward
    elif own is not None:
        model.forward = own


# --- 5. The one silencer ---------------------------------------------------------------------------------
# What: a filter on a named logger dropping warnings and notices whose message contains a fragment; with no
#   fragments, the logger's level raised to ERROR (its children included, which a filter would not reach).
# Why: optional libraries log notes that say nothing about the user's work (torchao's kernels this machine
#   cannot load, diffusers' "attention backends are experimental" on every set and reset, transformers'
#   image backend fallbacks); a tool that shows its own progress decides what else is shown.
# Retired by: each library's own notes going quiet (nothing to track: the silencer is a choice of the CLI).
# Scope: for the block only; errors always pass; every other record of those loggers passes.
# Undo: leaving the block removes the filters and puts each level back.
class _DropNoise(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


@contextmanager
def silenced(noise: Mapping[str, Iterable[str]]) -> Iterator[None]:
    """For the block, drop what each logger named in ``noise`` logs below ERROR whose message contains one
    of its fragments; a logger given no fragments is quiet below ERROR, children included. A library that
    sets its loggers' levels when imported must be imported before a level is raised."""
    filters: list[tuple[logging.Logger, logging.Filter]] = []
    levels: list[tuple[logging.Logger, int]] = []
    for name, fragments in noise.items():
        logger = logging.getLogger(name)
        fragments = tuple(fragments)
        if fragments:
            filters.append((logger, _DropNoise(fragments)))
            logger.addFilter(filters[-1][1])
        else:
            levels.append((logger, logger.level))
            logger.setLevel(max(logger.getEffectiveLevel(), logging.ERROR))
    try:
        yield
    finally:
        for logger, dropping in filters:
            logger.removeFilter(dropping)
        for logger, level in reversed(levels):
            logger.setLevel(level)


# --- 6. The pipeline running a call (reads only) --------------------------------------------------------
# What: nothing changes; the call stack is read (``sys._getframe``) for the innermost running pipeline
#   ``__call__`` whose pipeline holds the module being called.
# Why: a denoiser shared by several pipelines (``from_pipe`` for img2img / i2v, or two hand-built pipelines
#   around one transformer) must be routed along the grid of the scheduler of the pipeline that calls it,
#   and diffusers tells a denoiser nothing about its caller. The pipelines' own running state cannot say it:
#   a pipeline that was never given to FlowBlending (built later around a routed transformer) is unknown
#   to the router, and ``current_timestep`` is set by some pipelines only. The stack can.
# Retired by: diffusers passing the calling pipeline or its scheduler to a denoiser's hooks (none in 0.42;
#   no upstream issue known).
# Scope: frames of the calling thread, at most ``depth`` of them, read while the call runs; no reference is
#   kept past it.
# Undo: nothing to undo.
def calling_pipeline(module: Any, depth: int = 24) -> Any:
    """The innermost pipeline on the call stack whose ``__call__`` is running and which holds ``module``
    (``None`` when none is)."""
    frame = sys._getframe(2)
    try:
        for _ in range(depth):
            if frame is None:
                return None
            if frame.f_code.co_name == "__call__":
                owner = frame.f_locals.get("self")
                scheduler = getattr(owner, "scheduler", None)
                if hasattr(scheduler, "set_timesteps") and any(
                    value is module for value in vars(owner).values()
                ):
                    return owner
            frame = frame.f_back
        return None
    finally:
        del frame  # a frame held past the call keeps its locals (the latents) alive


# --- 7. FirstBlockCache decides across the ranks that split the sequence -------------------------------
# What: on each FirstBlockCache head hook of one model, the decision (``_should_compute_remaining_blocks``)
#   becomes an instance attribute: while the model runs split, the relative L1 change it thresholds is the
#   whole sequence's, numerator and denominator summed over the split's ranks (``collectives.relative_l1``);
#   while it runs whole, the class's own method decides, unchanged.
# Why: diffusers 0.42.1 takes it from the rank's own shard, so the ranks can disagree, and a rank that
#   computes the remaining blocks waits forever in the all-to-all of an attention the others skipped.
#   Every rank gets the same sums, so every rank takes the same decision, the one a single process takes.
# Retired by: diffusers reducing FirstBlockCache's decision under context parallelism (its SeaCache votes
#   across ranks in 0.42; FirstBlockCache does not; no upstream issue known).
# Scope: the head hooks of the model given (the ones the stack's enable_cache made); nothing else.
# Undo: decide_alone deletes the instance attributes (the class's method decides again).
_DECIDING: weakref.WeakSet[Any] = weakref.WeakSet()  # head hooks whose decision is ours


def decide_across_ranks(model: Any) -> None:
    """``model``'s FirstBlockCache hooks decide from the whole sequence while it is split across ranks."""
    from . import diffusers_internals

    for hook in diffusers_internals.first_block_cache_heads(model):
        if hook not in _DECIDING:
            setattr(hook, diffusers_internals.FIRST_BLOCK_CACHE_DECISION, _shared_decision(hook, model))
            _DECIDING.add(hook)


def decide_alone(model: Any) -> None:
    """Undo :func:`decide_across_ranks` on ``model`` (a no-op where it was not applied)."""
    from . import diffusers_internals

    for hook in diffusers_internals.first_block_cache_heads(model):
        if hook in _DECIDING:
            delattr(hook, diffusers_internals.FIRST_BLOCK_CACHE_DECISION)
            _DECIDING.discard(hook)


def _shared_decision(hook: Any, model: Any) -> Callable[[Any], bool]:
    import torch

    from . import diffusers_internals
    from .collectives import relative_l1

    alone = getattr(type(hook), diffusers_internals.FIRST_BLOCK_CACHE_DECISION)

    @torch.compiler.disable  # as the method it stands in for: a collective and a float, outside any graph
    def should_compute(residual: Any) -> bool:
        group = diffusers_internals.context_parallel_group(model)
        previous, threshold = diffusers_internals.first_block_cache_reference(hook)
        if group is None or previous is None:  # whole, or the first call: every rank computes alike
            return alone(hook, residual)
        return relative_l1(residual, previous, group) > threshold

    return should_compute
