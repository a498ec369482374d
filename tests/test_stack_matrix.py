"""Router x every cache x compile off/on x two solvers: runs, exact routing, no state leaks across runs or
across a switch (the first large step after the small segment recomputes every attention)."""

import pytest
import torch
from optional import needs_cachedit, needs_deepcache, needs_diffusers

from flowblending_accel.accelerators import (
    CacheDiT,
    DeepCache,
    FirstBlockCache,
    FlowBlendingConfig,
    MagCache,
    PyramidAttentionBroadcast,
    RegionalCompile,
    SeaCache,
    StepReduction,
    TaylorSeer,
    apply_flowblending_,
    calibrate_mag_ratios,
    remove_flowblending_,
)
from flowblending_accel.tiny_models import (
    sd_call_kwargs,
    tiny_sd_pipeline,
    tiny_unet_pair,
    tiny_wan_pair,
    tiny_wan_pipeline,
    wan_call_kwargs,
)

STEPS = 10
LSL = ["large"] * 4 + ["small"] * 4 + ["large"] * 2
RESUME_STEP = 8  # first large step after the small segment


# Configs chosen to skip whenever they have anything to reuse, so a stale state would show.
def _cache(name, pipe, small, kwargs):
    if name == "magcache":
        ratios = calibrate_mag_ratios(pipe, small, kwargs)
        return MagCache(
            mag_ratios=ratios,
            options=dict(num_inference_steps=STEPS, threshold=100.0, max_skip_steps=100, retention_ratio=0.1),
        )
    return {
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


def _build(name, solver):
    if name == "deepcache":
        large, small = tiny_unet_pair()
        pipe = tiny_sd_pipeline(large)
        reduce = StepReduction("dpm++-vp" if solver == "dpm++" else "euler-vp", STEPS)
        return pipe, small, sd_call_kwargs(steps=STEPS), reduce, "images"
    large, small = tiny_wan_pair()
    pipe = tiny_wan_pipeline(large)
    return pipe, small, wan_call_kwargs(steps=STEPS), StepReduction(solver, STEPS), "frames"


def _attention_calls(model, router):
    """Per denoiser call of ``model``: the solver step and how many attention modules really computed."""
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append([None, 0]))

    def computed(*_):
        calls[-1][0] = router.session.last_step
        calls[-1][1] += 1

    for name, module in model.named_modules():
        if name.endswith("to_q"):
            module.register_forward_pre_hook(computed)
    count = sum(1 for name, _ in model.named_modules() if name.endswith("to_q"))
    return calls, count


def _stateful_leftovers(model):
    from flowblending_accel.core.diffusers_internals import cached_states

    return cached_states(model)


def _run_stack(name, solver, compiled):
    pipe, small, kwargs, reduce, field = _build(name, solver)
    kwargs_fn = (
        (lambda: sd_call_kwargs(steps=STEPS)) if field == "images" else (lambda: wan_call_kwargs(steps=STEPS))
    )
    large = pipe.unet if field == "images" else pipe.transformer
    cache = _cache(name, pipe, small, kwargs)
    stack = [reduce, cache] + ([RegionalCompile()] if compiled else [])
    router = apply_flowblending_(pipe, small, FlowBlendingConfig("L40-S40-L20", accelerators=stack))
    calls, attention_modules = (None, 0) if compiled else _attention_calls(large, router)
    try:
        first = getattr(pipe(**kwargs_fn()), field)
        if calls is not None:
            calls.clear()  # check the second run: caches must start clean again
        second = getattr(pipe(**kwargs_fn()), field)
        trace = [m for _, m in router.last_run.trace]
        leftovers = _stateful_leftovers(large) + _stateful_leftovers(small)
    finally:
        remove_flowblending_(pipe)
    return first, second, trace, leftovers, calls, attention_modules


OPTIONAL = {
    "cache-dit": needs_cachedit,
    "deepcache": needs_deepcache,
    "magcache": needs_diffusers("magcache"),
    "seacache": needs_diffusers("seacache"),
}
CACHE_NAMES = [
    pytest.param(name, marks=OPTIONAL.get(name, ()))
    for name in ["fbc", "magcache", "taylorseer", "pab", "seacache", "cache-dit", "deepcache"]
]


@pytest.mark.parametrize("solver", ["euler", "dpm++"])
@pytest.mark.parametrize("name", CACHE_NAMES)
def test_cache_with_router(name, solver):
    first, second, trace, leftovers, calls, attention_modules = _run_stack(name, solver, False)
    assert trace == LSL
    assert torch.equal(first, second)  # nothing leaks from one run into the next
    if name not in ("cache-dit", "deepcache"):
        assert leftovers == 0  # diffusers cache states dropped at the end of the run
    # No reuse of state from before the gap: the first call of the resume step computes every attention.
    # (Later calls of that step may reuse it: PAB serves Wan's uncond call from its cond call by design.)
    resumed = next((count for step, count in calls if step == RESUME_STEP), 0)
    assert resumed == attention_modules, f"{name}: only {resumed} of {attention_modules} attentions computed"


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["euler", "dpm++"])
@pytest.mark.parametrize("name", [p for p in CACHE_NAMES if p.values[0] != "deepcache"])
def test_cache_with_router_and_regional_compile(name, solver):
    eager = _run_stack(name, solver, False)[0]
    first, second, trace, *_ = _run_stack(name, solver, True)
    assert trace == LSL and torch.equal(first, second)
    assert torch.allclose(first, eager, atol=1e-4, rtol=1e-4)  # compiled stack makes the same decisions


@needs_deepcache
def test_deepcache_rejects_compile_and_dits():
    pipe, small, *_ = _build("deepcache", "euler")
    with pytest.raises(ValueError, match="deepcache cannot be stacked with compile"):
        apply_flowblending_(
            pipe, small, FlowBlendingConfig("LSL", accelerators=[DeepCache(), RegionalCompile()])
        )
    wan = tiny_wan_pipeline()
    with pytest.raises(ValueError, match="DeepCache works on UNets only"):
        apply_flowblending_(wan, tiny_wan_pair()[1], FlowBlendingConfig("LSL", accelerators=[DeepCache()]))
    assert not hasattr(wan, "_flowblending_stack")
