"""Warnings a user needs, and a step reduction that reduces the steps without the caller's help."""

import warnings

import pytest
import torch

from flowblending_accel import FlowBlendingConfig, FlowBlendingWarning, flowblending, flowblending_stats
from flowblending_accel.accelerators import (
    StackOwnsArgumentWarning,
    apply_flowblending_,
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


@pytest.fixture
def pair():
    large, small = tiny_wan_pair()
    return tiny_wan_pipeline(large), small


def _advice(run) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    return [str(w.message) for w in caught if issubclass(w.category, FlowBlendingWarning)]


def test_a_schedule_ending_small_is_warned_at_apply(pair):
    pipe, small = pair
    advice = _advice(lambda: flowblending(pipe, small, "L40-S60").__enter__())
    assert len(advice) == 1 and "ends on the small model" in advice[0] and "end with an L stage" in advice[0]


def test_a_stage_without_steps_is_warned_at_run_start(pair):
    pipe, small = pair

    def run():
        with flowblending(pipe, small, "L45-S10-L45"):
            pipe(**wan_call_kwargs(steps=4))

    assert _advice(run) == [
        "stage 2 (S10) of L45-S10-L45 gets no solver step at 4 steps: it is skipped; use more steps or a "
        "wider stage."
    ]


def test_guidance_off_warns_unless_the_small_model_is_distilled(pair):
    pipe, small = pair
    advice = _advice(lambda: flowblending(pipe, small, FlowBlendingConfig(small_guidance="off")).__enter__())
    assert len(advice) == 1 and "small_distilled=True" in advice[0]
    pipe, small = tiny_wan_pipeline(tiny_wan_pair()[0]), tiny_wan_pair()[1]
    assert (
        _advice(
            lambda: flowblending(
                pipe, small, FlowBlendingConfig(small_guidance="off", small_distilled=True)
            ).__enter__()
        )
        == []
    )


def test_the_paper_schedule_is_not_warned(pair):
    pipe, small = pair

    def run():
        with flowblending(pipe, small, "L40-S40-L20"):
            pipe(**wan_call_kwargs(steps=10))

    assert _advice(run) == []


def test_step_reduction_runs_its_steps_through_the_python_api(pair):
    pipe, small = pair
    kwargs = wan_call_kwargs(steps=50)
    kwargs.pop("num_inference_steps")
    with (
        flowblending(pipe, small, FlowBlendingConfig("L40-S40-L20", accelerators=["dpm++:10"])),
        torch.inference_mode(),
    ):
        pipe(**kwargs)  # the caller says nothing about steps
        assert flowblending_stats(pipe).num_steps == 10 and len(pipe.scheduler.timesteps) == 10
        with pytest.warns(
            StackOwnsArgumentWarning, match=r"dpm\+\+:10 runs num_inference_steps=10; the call's "
        ):
            pipe(**wan_call_kwargs(steps=50))  # the caller asks for 50: the stack's 10 win, and it says so
        assert flowblending_stats(pipe).num_steps == 10
        assert flowblending_stats(pipe).steps_per_model == {"large": 6, "small": 4}


def test_step_reduction_refuses_custom_timesteps_and_restores_the_class():
    large, small = tiny_unet_pair()
    pipe = tiny_sd_pipeline(large)
    original = type(pipe)
    apply_flowblending_(pipe, small, FlowBlendingConfig("L40-S40-L20", accelerators=["dpm++-vp:8"]))
    assert (
        type(pipe) is not original and type(pipe).__name__ == original.__name__ and isinstance(pipe, original)
    )
    with pytest.raises(
        ValueError, match=r"dpm\+\+-vp:8 sets num_inference_steps=8, but the call passes custom `timesteps`"
    ):
        pipe(**sd_call_kwargs(steps=8, timesteps=[999, 500]))
    remove_flowblending_(pipe)
    assert type(pipe) is original
