"""diffusers' modular pipelines (a ModularPipeline built from blocks) routed like the classic ones: the router
finds the modular pipeline's scheduler on the call stack, `L100` is bit-identical to the unrouted modular
pipeline, `L40-S40-L20` makes the planned calls per model, and Wan 2.2's two-expert loop block
(`Wan22LoopDenoiser`, which picks an expert by `boundary_ratio`) composes with the router as `WanPipeline`
does."""

import pytest
import torch
from optional import needs_cachedit

from flowblending_accel import CacheDiT, FlowBlendingConfig, apply_flowblending_, remove_flowblending_
from flowblending_accel.core import diffusers_versions
from flowblending_accel.core.api import flowblending_routers
from flowblending_accel.core.families import family_for
from flowblending_accel.tiny_models import (
    modular_ltx_call_kwargs,
    modular_wan_call_kwargs,
    tiny_ltx_pair,
    tiny_modular_ltx_pipeline,
    tiny_modular_wan22_pipeline,
    tiny_modular_wan_pipeline,
    tiny_wan_pair,
    tiny_wan_pipeline,
    wan_call_kwargs,
)

pytestmark = pytest.mark.skipif(
    not diffusers_versions.has("modular_ltx"),
    reason="modular pipelines need diffusers >= 0.37 (Wan) and 0.38 (LTX): tested from 0.38",
)

STEPS = 10
LSL = ["large"] * 4 + ["small"] * 4 + ["large"] * 2


def _modular(kind):
    """(pipeline, small, call arguments) of a tiny modular pipeline."""
    if kind == "ltx":
        large, small = tiny_ltx_pair()
        return tiny_modular_ltx_pipeline(large), small, lambda: modular_ltx_call_kwargs(steps=STEPS)
    large, small = tiny_wan_pair()
    if kind == "wan2.2":
        return tiny_modular_wan22_pipeline(large), small, lambda: modular_wan_call_kwargs(steps=STEPS)
    return tiny_modular_wan_pipeline(large), small, lambda: modular_wan_call_kwargs(steps=STEPS)


def _computed_calls(model):
    """How many calls ``model`` really computed (its first layer ran), whoever routed them."""
    calls = []
    first = model.patch_embedding if hasattr(model, "patch_embedding") else model.proj_in
    first.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def test_modular_pipelines_are_families_of_their_own():
    wan, wan22, ltx = (family_for(_modular(kind)[0]) for kind in ("wan", "wan2.2", "ltx"))
    assert wan.name == wan22.name == "wan-modular" and not wan.cache_context
    assert wan22.present_denoisers(_modular("wan2.2")[0]) == ["transformer", "transformer_2"]
    # The guider makes one call per CFG branch, conditional first, where classic LTX batches them.
    assert ltx.name == "ltx-modular" and ltx.separate_cfg_calls and not ltx.batched_cfg and ltx.cache_context
    assert family_for(tiny_wan_pipeline()).name == "wan"  # the classic pipeline keeps its family


@pytest.mark.parametrize("kind", ["wan", "wan2.2", "ltx"])
def test_l100_is_bit_identical_to_the_unrouted_modular_pipeline(kind):
    pipe, small, kwargs = _modular(kind)
    reference = pipe(**kwargs())
    router = apply_flowblending_(pipe, small, "L100")
    try:
        routed = pipe(**kwargs())
    finally:
        remove_flowblending_(pipe)
    assert torch.equal(routed, reference)
    assert router.last_run.steps_per_model == {"large": STEPS if kind != "wan2.2" else 7}  # expert 1: 0-6


@pytest.mark.parametrize("kind", ["wan", "ltx"])
def test_lsl_makes_the_planned_calls_per_model(kind):
    pipe, small, kwargs = _modular(kind)
    large_calls, small_calls = _computed_calls(pipe.transformer), _computed_calls(small)
    router = apply_flowblending_(pipe, small, "L40-S40-L20")
    try:
        first = pipe(**kwargs())
        # A modular pipeline never resets its components' hooks after a call: its run stays open until the
        # next one starts (the router notices the new timesteps) or FlowBlending is removed.
        assert router.session is not None
        second = pipe(**kwargs())
        assert router.runs[-1].finished and router.runs[-1].calls_per_model == {"large": 12, "small": 8}
    finally:
        remove_flowblending_(pipe)
    assert [model for _, model in router.last_run.trace] == LSL
    assert router.last_run.finished and router.last_run.calls_per_model == {"large": 12, "small": 8}
    assert len(large_calls) == 24 and len(small_calls) == 16  # two runs, each CFG branch its own call
    assert torch.equal(first, second)  # nothing leaks from one run into the next


def _routed_experts(pipe, small, call_kwargs):
    """Each expert's router trace and the latents of one routed L40-S40-L20 call."""
    apply_flowblending_(pipe, small, "L40-S40-L20")
    try:
        output = pipe(**call_kwargs)
        latents = output.frames if hasattr(output, "frames") else output
        routers = flowblending_routers(pipe)
    finally:
        remove_flowblending_(pipe)
    return [router.last_run.trace for router in routers], latents


def test_wan22_modular_loop_composes_with_the_router_as_the_classic_pipeline():
    high, small = tiny_wan_pair()
    low, _ = tiny_wan_pair(seed=5)
    modular = tiny_modular_wan22_pipeline(high, low)  # boundary 0.7: expert 1 serves steps 0-6, expert 2 7-9
    classic = tiny_wan_pipeline(high, transformer_2=low, boundary_ratio=modular.config.boundary_ratio)
    # The modular blocks' guiders scale 4.0 (high-noise expert) and 3.0 (low-noise); the classic call says so.
    classic_kwargs = wan_call_kwargs(steps=STEPS, guidance_scale=4.0, guidance_scale_2=3.0)
    classic_traces, classic_latents = _routed_experts(classic, small, classic_kwargs)
    modular_traces, modular_latents = _routed_experts(modular, small, modular_wan_call_kwargs(steps=STEPS))
    expert_1 = [(step, "large") for step in range(4)] + [(step, "small") for step in range(4, 7)]
    expert_2 = [(7, "small"), (8, "large"), (9, "large")]
    assert classic_traces == modular_traces == [expert_1, expert_2]
    assert torch.equal(modular_latents, classic_latents)


def test_caches_that_need_a_cache_context_are_refused_on_modular_wan():
    pipe, small, _ = _modular("wan")
    for cache in ("fbc", "taylorseer", "magcache:calibrate", "seacache"):
        with pytest.raises(ValueError, match="outside any cache_context.*classic pipeline, or cache-dit"):
            apply_flowblending_(pipe, small, FlowBlendingConfig("LSL", accelerators=[cache]))
    ltx, ltx_small, _ = _modular("ltx")
    with pytest.raises(ValueError, match="pab: the ltx-modular pipeline keeps no current_timestep"):
        apply_flowblending_(ltx, ltx_small, FlowBlendingConfig("LSL", accelerators=["pab"]))
    for refused in (pipe, ltx):  # refused before anything changed
        assert (
            not flowblending_routers(refused) and getattr(refused.transformer, "_cache_config", None) is None
        )


@pytest.mark.parametrize(
    "kind, cache",
    [("ltx", "fbc:0.05"), pytest.param("wan", "tiny cache-dit", marks=needs_cachedit)],
    ids=["fbc-on-ltx", "cache-dit-on-wan"],
)
def test_a_cache_runs_on_both_models_of_a_modular_pipeline(kind, cache):
    # LTX's loop block enters a cache context per guider batch; cache-dit needs none.
    pipe, small, kwargs = _modular(kind)
    if cache == "tiny cache-dit":  # its default computes 8 front blocks; the tiny transformer has 3
        cache = CacheDiT(options=dict(Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=1))
    router = apply_flowblending_(pipe, small, FlowBlendingConfig("L40-S40-L20", accelerators=[cache]))
    try:
        pipe(**kwargs())
    finally:
        remove_flowblending_(pipe)
    assert [model for _, model in router.last_run.trace] == LSL


def test_guidance_free_small_stage_on_modular_wan():
    # The guider calls the conditional batch first, so the small stage's unconditional calls can be answered.
    pipe, small, kwargs = _modular("wan")
    small_calls = _computed_calls(small)
    config = FlowBlendingConfig("L40-S40-L20", small_guidance="off", small_distilled=True)
    router = apply_flowblending_(pipe, small, config)
    try:
        pipe(**kwargs())
    finally:
        remove_flowblending_(pipe)
    assert len(small_calls) == 4 and router.last_run.skipped_uncond_calls == 4
