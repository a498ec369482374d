"""Per-model cache state across a switch: every stateful cache in the stack sees only its own model's steps.

A witness records, at the start of every call a model computes, what that model's cache state holds: the
pipeline steps that wrote it (each tensor in the state is tagged with the step of the call that left it there;
SeaCache also records its trajectory's steps itself) and the cache's own step counter (MagCache's ratio index,
TaylorSeer's and PAB's call counters, cache-dit's step counter, DeepCache's cycle start). Under
``L40-S40-L20`` at 10 steps the large model runs steps 0-3 and 8-9, the small one 4-7: nothing either model
holds may come from another segment, and each counter must restart with its model's segment (MagCache's
instead follows the pipeline's step, so ratio ``i`` is read at step ``i``). Each test also runs with the
reset the router or the stack does at a switch taken away, and must then find a violation: the witness can
fail.
"""

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from optional import needs_cachedit, needs_deepcache

from flowblending_accel.accelerators import (
    CacheDiT,
    DeepCache,
    FirstBlockCache,
    FlowBlendingConfig,
    MagCache,
    PyramidAttentionBroadcast,
    SeaCache,
    TaylorSeer,
    applied_stack,
    apply_flowblending_,
    calibrate_mag_ratios,
    remove_flowblending_,
)
from flowblending_accel.accelerators.cachedit import CacheDiTAccelerator
from flowblending_accel.accelerators.deepcache import DeepCacheAccelerator
from flowblending_accel.core.api import flowblending_routers
from flowblending_accel.core.diffusers_internals import cache_states, registries, stateful_hooks
from flowblending_accel.tiny_models import (
    sd_call_kwargs,
    tiny_sd_pipeline,
    tiny_unet_pair,
    tiny_wan_pair,
    tiny_wan_pipeline,
    wan_call_kwargs,
)

STEPS = 10
SCHEDULE = "L40-S40-L20"
SEGMENTS = {"large": [(0, 3), (8, 9)], "small": [(4, 7)]}


@dataclass
class Seen:
    """One call a model computed: its step, which call of the step it is, and what its cache state held."""

    model: str
    step: int
    call: int  # 0: the step's first call (conditional), 1: its second (unconditional)
    steps: set[int]  # the pipeline steps that wrote the state it found
    counter: Any  # the cache's own step counter as the call starts


def _tensors(value: Any, depth: int = 6):
    if isinstance(value, torch.Tensor):
        yield value
    elif depth and isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item, depth - 1)
    elif depth and isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item, depth - 1)
    elif depth and hasattr(value, "__dict__") and not isinstance(value, torch.nn.Module | type):
        yield from _tensors(vars(value), depth - 1)


class Witness:
    """Tags every tensor a model's cache state holds with the step that left it (after each pipeline call) and
    reads, as each model's call starts, the tags of what it holds and the cache's counter. ``segments``: each
    model's segments as ``(first, last)`` steps."""

    def __init__(self, pipe, probe, models: dict[str, torch.nn.Module], segments: dict[str, list]) -> None:
        self.routers, self.probe, self.models = flowblending_routers(pipe), probe, models
        self.stack, self.segments = applied_stack(pipe), segments
        self.seen: list[Seen] = []
        self._written: dict[int, tuple[torch.Tensor, int]] = {}  # id -> (tensor, step); kept: ids stay unique
        self._calls: Counter = Counter()
        for label, model in models.items():
            entry = model.patch_embedding if hasattr(model, "patch_embedding") else model.conv_in
            entry.register_forward_pre_hook(lambda *_, label=label, model=model: self._entered(label, model))
        for router in self.routers:  # after every call the pipeline makes, whichever expert it called
            router.large.register_forward_hook(lambda *_: self._tag())

    def _step(self) -> int:
        # Wan 2.2: the first expert's run stays open past its last step; the latest step is the one running.
        return max(router.session.last_step for router in self.routers if router.session is not None)

    def _state_tensors(self, model):
        return _tensors(self.probe.states(model, self.stack))

    def _entered(self, label: str, model) -> None:
        step = self._step()
        call = self._calls[label, step]
        self._calls[label, step] += 1
        steps = {self._written[id(t)][1] for t in self._state_tensors(model) if id(t) in self._written}
        steps |= self.probe.recorded_steps(model, self.stack)
        counter = self.probe.counter(model, self.stack)
        self.seen.append(Seen(label, step, call, steps, counter))

    def _tag(self) -> None:
        step = self._step()
        for model in self.models.values():
            for tensor in self._state_tensors(model):
                self._written.setdefault(id(tensor), (tensor, step))

    def computed(self) -> set[tuple[str, int]]:
        return {(seen.model, seen.step) for seen in self.seen}

    def planned(self) -> set[tuple[str, int]]:
        return {(m, s) for m, segments in self.segments.items() for a, b in segments for s in range(a, b + 1)}

    def violations(self) -> list[str]:
        found = []
        for seen in self.seen:
            first = next(a for a, b in self.segments[seen.model] if a <= seen.step <= b)
            stale = sorted(s for s in seen.steps if not first <= s <= seen.step)
            if stale:
                found.append(f"{seen.model} at step {seen.step} holds state written at steps {stale}")
            expected = self.probe.expected(seen.step, first, seen.call)
            if seen.counter != expected:
                found.append(f"{seen.model} at step {seen.step}: counter {seen.counter}, expected {expected}")
        return found


# --- Where each cache keeps its per-step state, and what its counter must read ---------------------------
def _first_hook(model, name: str):
    return next(r.get_hook(name) for r in registries(model) if r.get_hook(name) is not None)


def _diffusers_states(model, stack) -> list[Any]:
    # StateManager states (one per cache context), and PAB's one state per hooked attention module.
    return [
        *cache_states(model),
        *(hook.state for _, hook in stateful_hooks(model) if hasattr(hook, "state")),
    ]


def _cachedit_context(model):
    # cache-dit keeps its context manager and context names on the model it caches (its own attributes).
    return model._context_manager.get_context(model._context_names[0])


def _deepcache_helper(model, stack):
    runtime = next(a for a in stack.accelerators if isinstance(a, DeepCacheAccelerator))
    return runtime.helpers[id(model)]


def _nothing(*_) -> None:
    return None


def _no_steps(*_) -> set[int]:
    return set()


@dataclass(frozen=True)
class Probe:
    """Where one cache keeps its per-step state, and what its own step counter must read."""

    states: Callable = _diffusers_states  # (model, stack) -> the objects holding the state
    counter: Callable = _nothing  # (model, stack) -> the counter as a call of the model starts
    expected: Callable = _nothing  # (step, its segment's first step, call of the step) -> that counter
    recorded_steps: Callable = _no_steps  # (model, stack) -> the steps the cache recorded itself


def _sea_history_steps(model, stack) -> set[int]:
    return {entry[0] for state in cache_states(model) for entry in getattr(state, "history", ())}


PROBES = {
    "fbc": Probe(),  # the previous call's first-block residual and tail residuals
    # The ratio it reads is mag_ratios[step_index]: the pipeline's own step. (get_state makes the context's
    # state if the call has none yet, as the leader hook does a moment later.)
    "magcache": Probe(
        counter=lambda model, stack: (
            _first_hook(model, "mag_cache_leader_block_hook").state_manager.get_state().step_index
        ),
        expected=lambda step, first, call: step,
    ),
    "taylorseer": Probe(  # Taylor factors from the model's own steps; its call counter (per CFG branch)
        counter=lambda model, stack: (
            _first_hook(model, "taylorseer_cache").state_manager.get_state().current_step
        ),
        expected=lambda step, first, call: step - first - 1,
    ),
    "pab": Probe(  # the attention output it broadcasts; its iteration counter (both CFG calls count)
        counter=lambda model, stack: _first_hook(model, "pyramid_attention_broadcast").state.iteration,
        expected=lambda step, first, call: 2 * (step - first) + call,
    ),
    "seacache": Probe(recorded_steps=_sea_history_steps),  # the trajectory it extrapolates from
    "cache-dit": Probe(  # its residual buffers; its step counter (the conditional call counts the step)
        states=lambda model, stack: _cachedit_context(model).buffers,
        counter=lambda model, stack: _cachedit_context(model).executed_steps,
        expected=lambda step, first, call: step - first + call,
    ),
    "deepcache": Probe(  # the deep features it reuses; the step its recompute cycle started at
        states=lambda model, stack: _deepcache_helper(model, stack).cached_output,
        counter=lambda model, stack: _deepcache_helper(model, stack).start_timestep,
        expected=lambda step, first, call: None if step == first else first,
    ),
}


def _cache(name, pipe, small, kwargs):
    if name == "magcache":
        ratios = calibrate_mag_ratios(pipe, small, kwargs)
        options = dict(num_inference_steps=STEPS, threshold=100.0, max_skip_steps=100, retention_ratio=0.1)
        return MagCache(mag_ratios=ratios, options=options)
    return {  # configs that reuse whatever they hold, so stale state would be used, not only kept
        "fbc": lambda: FirstBlockCache(threshold=0.5),
        "taylorseer": lambda: TaylorSeer(options=dict(cache_interval=50, disable_cache_before_step=1)),
        "pab": lambda: PyramidAttentionBroadcast(
            options=dict(
                spatial_attention_block_skip_range=3, spatial_attention_timestep_skip_range=(0, 1000)
            )
        ),
        "seacache": lambda: SeaCache(options=dict(threshold=0.5)),
        "cache-dit": lambda: CacheDiT(
            options=dict(
                Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=1, residual_diff_threshold=0.5
            )
        ),
        "deepcache": lambda: DeepCache(interval=3),
    }[name]()


def _without_the_switch_reset(name, monkeypatch) -> dict[str, Any]:
    """Take away what makes a model's cache start fresh at its segment: the router's reset for diffusers'
    caches, the stack's per-segment refresh for cache-dit and DeepCache."""
    if name == "cache-dit":
        monkeypatch.setattr(CacheDiTAccelerator, "on_segment_start", lambda *args: None)
    elif name == "deepcache":
        monkeypatch.setattr(DeepCacheAccelerator, "on_segment_start", lambda *args: None)
    else:
        return {"reset_on_switch": False}
    return {}


def _witnessed_run(name, broken, monkeypatch):
    if name == "deepcache":
        large, small = tiny_unet_pair()
        pipe, kwargs = tiny_sd_pipeline(large), lambda: sd_call_kwargs(steps=STEPS)
    else:
        large, small = tiny_wan_pair()
        pipe, kwargs = tiny_wan_pipeline(large), lambda: wan_call_kwargs(steps=STEPS)
    cache = _cache(name, pipe, small, kwargs())
    options = _without_the_switch_reset(name, monkeypatch) if broken else {}
    router = apply_flowblending_(pipe, small, FlowBlendingConfig(SCHEDULE, accelerators=[cache], **options))
    witness = Witness(pipe, PROBES[name], {"large": large, "small": small}, SEGMENTS)
    try:
        pipe(**kwargs())
    finally:
        remove_flowblending_(pipe)
    return router.last_run, witness


OPTIONAL = {"cache-dit": needs_cachedit, "deepcache": needs_deepcache}


@pytest.mark.parametrize("broken", [False, True], ids=["as-applied", "without-switch-reset"])
@pytest.mark.parametrize("name", [pytest.param(name, marks=OPTIONAL.get(name, ())) for name in PROBES])
def test_each_models_cache_sees_only_its_own_steps(name, broken, monkeypatch):
    stats, witness = _witnessed_run(name, broken, monkeypatch)
    assert stats.steps_per_model == {"large": 6, "small": 4}
    assert witness.computed() == witness.planned()
    if broken:
        assert witness.violations(), f"{name}: stale state after the switch went unnoticed"
        return
    assert witness.violations() == []
    assert any(seen.steps for seen in witness.seen), f"{name}: the witness read no state at all"


# Wan 2.2 at boundary 0.7 with one small model per expert: expert 1 serves steps 0-6 (large 0-3, its small
# 4-6), expert 2 steps 7-9 (its small 7, large 8-9). diffusers#14025: MagCache on a two-model pipeline counts
# every step as its own; here each expert's cache reads the ratio of the pipeline's step, and a forecasting
# cache (TaylorSeer) extrapolates only from its own model's steps across both switches.
WAN22_SEGMENTS = {
    "transformer": [(0, 3)],
    "small:transformer": [(4, 6)],
    "small:transformer_2": [(7, 7)],
    "transformer_2": [(8, 9)],
}


@pytest.mark.parametrize("name", ["magcache", "taylorseer"])
def test_each_experts_cache_sees_only_its_own_steps_in_wan22(name):
    high, small_high = tiny_wan_pair()
    low, small_low = tiny_wan_pair(seed=5)
    pipe = tiny_wan_pipeline(high, transformer_2=low, boundary_ratio=0.7)
    smalls = {"transformer": small_high, "transformer_2": small_low}
    cache = _cache(name, pipe, smalls, wan_call_kwargs(steps=STEPS))
    apply_flowblending_(pipe, smalls, FlowBlendingConfig(SCHEDULE, accelerators=[cache]))
    models = {"transformer": high, "small:transformer": small_high}
    models |= {"small:transformer_2": small_low, "transformer_2": low}
    witness = Witness(pipe, PROBES[name], models, WAN22_SEGMENTS)
    try:
        pipe(**wan_call_kwargs(steps=STEPS))
    finally:
        remove_flowblending_(pipe)
    assert witness.computed() == witness.planned()
    assert witness.violations() == []
    assert any(seen.steps for seen in witness.seen)
