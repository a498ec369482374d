"""Tools on a pipeline with two routed denoisers (Wan 2.2's experts): every router is counted and followed."""

import torch
from optional import needs_diffusers

from flowblending_accel import flowblending_stats
from flowblending_accel.accelerators import (
    FlowBlendingConfig,
    RoutedModels,
    calibrate_mag_ratios,
    flowblending,
)
from flowblending_accel.analysis.divergence import divergence_curve
from flowblending_accel.core.families import family_for
from flowblending_accel.core.schedule import Schedule
from flowblending_accel.metrics.flops import run_flops
from flowblending_accel.tiny_models import tiny_unet, tiny_wan_pair, tiny_wan_pipeline, wan_call_kwargs


def _wan22():
    high, small = tiny_wan_pair()
    low, _ = tiny_wan_pair(seed=5)
    return tiny_wan_pipeline(high, transformer_2=low, boundary_ratio=0.7), small


def test_stack_target_labels_both_experts_and_one_small():
    pipe, small = _wan22()
    target = RoutedModels.of(pipe, small)
    assert list(target.models()) == ["transformer", "transformer_2", "small"]
    assert list(target.models("large")) == ["transformer", "transformer_2"]
    assert target.label_of(pipe.transformer_2) == "transformer_2" and target.label_of(small) == "small"


def test_run_flops_counts_every_expert():
    pipe, small = _wan22()
    flops, stats = run_flops(pipe, small, Schedule.parse("L40-S40-L20"), wan_call_kwargs(steps=10))
    assert stats.calls_per_model == {"large": 12, "small": 8}  # both experts' calls, CFG as two calls
    assert set(flops) == {"large", "small"} and flops["large"] > flops["small"] > 0


def test_a_single_denoiser_name_is_one_name():
    pipe, small = _wan22()
    stack = ["fbc:0.2"]
    with (
        flowblending(
            pipe, small, FlowBlendingConfig("L40-S40-L20", accelerators=stack, denoisers="transformer")
        ),
        torch.inference_mode(),
    ):
        pipe(**wan_call_kwargs(steps=10))
        # Only expert 1 routes: it runs steps 0-6 of the 10-step grid, of which 4-6 are the small stage.
        assert flowblending_stats(pipe).calls_per_model == {"large": 8, "small": 6}


@needs_diffusers("magcache")
def test_mag_ratios_are_calibrated_for_every_model():
    pipe, small = _wan22()
    ratios = calibrate_mag_ratios(pipe, small, wan_call_kwargs(steps=6))
    assert sorted(ratios) == ["small", "transformer", "transformer_2"]
    assert len(ratios["small"]) > 0 and len(ratios["transformer"]) > 0


def test_divergence_follows_the_whole_call_across_experts():
    pipe, small = _wan22()
    curve = divergence_curve(pipe, small, [wan_call_kwargs(steps=10)], guidance_scale=5.0)
    assert len(curve.sigmas) == 10 and curve.values["velocity_cos_distance"].shape == (1, 10)


def test_latent_consistency_pipelines_are_not_batched_cfg():
    class LatentConsistencyModelPipeline:
        components = {}

        def __init__(self):
            self.unet = tiny_unet()

    family = family_for(LatentConsistencyModelPipeline())
    assert family.name == "lcm" and not family.batched_cfg and family.is_unet("unet")


def test_a_completed_call_is_finished_for_both_experts():
    pipe, small = _wan22()
    # The first expert never sees the last step; the call still finished.
    with flowblending(pipe, small, "L40-S40-L20"), torch.inference_mode():
        pipe(**wan_call_kwargs(steps=10))
        stats = flowblending_stats(pipe)
    assert stats.finished and not stats.aborted
