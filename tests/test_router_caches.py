"""Feature caches on both models: context forwarding, reset on switch, no stale state across a gap."""

import pytest
import torch
from diffusers import FirstBlockCacheConfig

from flowblending_accel import FlowBlendingConfig, apply_flowblending_, remove_flowblending_
from flowblending_accel.core.diffusers_internals import cached_states
from flowblending_accel.tiny_models import tiny_wan_pair, tiny_wan_pipeline, wan_call_kwargs


def _tail_compute_steps(pipe, model, router):
    """Solver steps at which ``model``'s last block really computed (its FFN ran)."""
    steps = []
    model.blocks[-1].ffn.register_forward_pre_hook(lambda *_: steps.append(router.session.last_step))
    return steps


def _cached_pair(threshold):
    large, small = tiny_wan_pair()
    # One config instance per model: diffusers mutates some configs in place.
    large.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    small.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    return large, small


def _states(module):
    return cached_states(module)


def test_first_block_cache_on_both_models_runs_and_is_reset(wan_pair):
    large, small = _cached_pair(threshold=0.05)
    pipe = tiny_wan_pipeline(large)
    router = apply_flowblending_(pipe, small, "L40-S40-L20")
    first = pipe(**wan_call_kwargs(steps=20)).frames
    second = pipe(**wan_call_kwargs(steps=20)).frames
    assert torch.equal(first, second)  # no cache state leaks from one run into the next
    assert router.last_run.steps_per_model == {"large": 12, "small": 8}
    assert _states(large) == 0 and _states(small) == 0  # both reset at the end of the run


@pytest.mark.parametrize("reset_on_switch", [True, False])
def test_large_model_computes_in_full_after_switching_back(reset_on_switch):
    # A threshold so loose that FirstBlockCache reuses its tail whenever it has a residual to reuse: only a
    # reset on the switch back forces the large model to compute its first step after the small segment.
    large, small = _cached_pair(threshold=1e6)
    pipe = tiny_wan_pipeline(large)
    router = apply_flowblending_(
        pipe, small, FlowBlendingConfig("L40-S40-L20", reset_on_switch=reset_on_switch)
    )
    large_steps = _tail_compute_steps(pipe, large, router)
    small_steps = _tail_compute_steps(pipe, small, router)
    pipe(**wan_call_kwargs(steps=20))
    assert router.last_run.trace[16] == (16, "large")
    assert 0 in large_steps  # run start: fresh cache
    if reset_on_switch:
        assert 16 in large_steps  # first large step after the gap recomputed from scratch
        assert 8 in small_steps
    else:
        assert 16 not in large_steps  # the stale residual from step 0 was reused: what the reset prevents


def test_small_model_receives_the_pipeline_cache_context(wan_pair):
    large, small = tiny_wan_pair()
    small.enable_cache(FirstBlockCacheConfig(threshold=0.05))  # raises "No cache context" without forwarding
    pipe = tiny_wan_pipeline(large)
    router = apply_flowblending_(pipe, small, "L40-S40-L20")
    pipe(**wan_call_kwargs(steps=10))
    assert router.last_run.finished


def test_cache_keeps_working_after_removal():
    large, small = _cached_pair(threshold=0.05)
    pipe = tiny_wan_pipeline(large)
    reference = pipe(**wan_call_kwargs(steps=10)).frames
    apply_flowblending_(pipe, small, "L100")
    assert torch.equal(pipe(**wan_call_kwargs(steps=10)).frames, reference)
    remove_flowblending_(pipe)
    assert torch.equal(pipe(**wan_call_kwargs(steps=10)).frames, reference)
