"""LTX (batched CFG, per-token timesteps), SD (positional UNet timestep), Flux (distilled guidance or true
CFG in two calls), Wan 2.2 experts, Wan I2V."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)

from flowblending_accel import (
    FlowBlendingConfig,
    apply_flowblending_,
    flowblending_stats,
    remove_flowblending_,
)
from flowblending_accel.core.families import Family, family_for, register_family, registered_families
from flowblending_accel.tiny_models import (
    flux_call_kwargs,
    ltx_call_kwargs,
    sd_call_kwargs,
    tiny_flux_pair,
    tiny_flux_pipeline,
    tiny_ltx_pipeline,
    tiny_sd_pipeline,
    tiny_wan_pair,
    tiny_wan_pipeline,
    wan_call_kwargs,
)

LSL_10 = ["large"] * 4 + ["small"] * 4 + ["large"] * 2


def _image(size=32):
    return PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8))


# ------------------------------------------------------------------------------------------------ Flux
def test_flux_all_large_identical_and_lsl_counts():
    large, small = tiny_flux_pair()
    pipe = tiny_flux_pipeline(large)
    assert family_for(pipe).name == "flux"
    reference = pipe(**flux_call_kwargs()).images
    apply_flowblending_(pipe, small, "L100")
    assert torch.equal(pipe(**flux_call_kwargs()).images, reference)
    remove_flowblending_(pipe)
    router = apply_flowblending_(pipe, small, "L40-S40-L20")
    pipe(**flux_call_kwargs())
    assert [m for _, m in router.last_run.trace] == LSL_10
    assert router.last_run.calls_per_model == {"large": 6, "small": 4}  # guidance distilled: one call a step


def test_flux_true_cfg_two_calls_and_a_guidance_free_small_stage():
    large, small = tiny_flux_pair()
    pipe = tiny_flux_pipeline(large)
    router = apply_flowblending_(pipe, small, "L40-S40-L20")
    pipe(**flux_call_kwargs(true_cfg_scale=3.0))
    assert router.last_run.calls_per_model == {"large": 12, "small": 8}
    remove_flowblending_(pipe)
    router = apply_flowblending_(
        pipe, small, FlowBlendingConfig("L40-S40-L20", small_guidance="off", small_distilled=True)
    )
    pipe(**flux_call_kwargs(true_cfg_scale=3.0))
    assert router.last_run.calls_per_model == {"large": 12, "small": 4}  # the negative branch skipped


# ------------------------------------------------------------------------------------------------- LTX
def test_ltx_all_large_identical_and_lsl_counts(ltx_pair):
    large, small = ltx_pair
    pipe = tiny_ltx_pipeline(large)
    reference = pipe(**ltx_call_kwargs(steps=10)).frames
    apply_flowblending_(pipe, small, "L100")
    assert torch.equal(pipe(**ltx_call_kwargs(steps=10)).frames, reference)
    remove_flowblending_(pipe)
    assert torch.equal(pipe(**ltx_call_kwargs(steps=10)).frames, reference)
    router = apply_flowblending_(pipe, small, "L40-S40-L20")
    routed = pipe(**ltx_call_kwargs(steps=10)).frames
    assert [m for _, m in router.last_run.trace] == LSL_10
    assert router.last_run.calls_per_model == {"large": 6, "small": 4}  # batched CFG: one call per step
    assert not torch.equal(routed, reference)
    assert torch.equal(pipe(**ltx_call_kwargs(steps=10)).frames, routed)


def test_ltx_image_to_video_per_token_timesteps(ltx_pair):
    from diffusers import LTXImageToVideoPipeline

    large, small = ltx_pair
    pipe = tiny_ltx_pipeline(large, pipeline_class=LTXImageToVideoPipeline)
    seen = []
    large.register_forward_pre_hook(
        lambda m, a, kw: seen.append(tuple(kw["timestep"].shape)), with_kwargs=True
    )
    router = apply_flowblending_(pipe, small, "L40-S40-L20")
    pipe(image=_image(), **ltx_call_kwargs(steps=10))
    assert seen and all(len(shape) == 2 for shape in seen)  # (2B, seq): conditioning tokens at 0
    assert [m for _, m in router.last_run.trace] == LSL_10


def test_ltx_condition_pipeline(ltx_pair):
    from diffusers import LTXConditionPipeline

    large, small = ltx_pair
    pipe = tiny_ltx_pipeline(
        large, scheduler=FlowMatchEulerDiscreteScheduler(), pipeline_class=LTXConditionPipeline
    )
    router = apply_flowblending_(pipe, small, "L40-S40-L20")
    kwargs = ltx_call_kwargs(steps=10)
    pipe(image=_image(), **kwargs)
    stats = router.last_run
    assert stats.finished and stats.num_steps == 10
    assert [m for _, m in stats.trace] == LSL_10


# -------------------------------------------------------------------------------------------------- SD
@pytest.mark.parametrize(
    "scheduler",
    [
        lambda: DDIMScheduler(steps_offset=1, clip_sample=False),
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
    ],
    ids=["ddim", "dpm++", "euler"],
)
def test_sd_unet_positional_timestep(unet_pair, scheduler):
    large, small = unet_pair
    pipe = tiny_sd_pipeline(large, scheduler())
    reference = pipe(**sd_call_kwargs(steps=10)).images
    apply_flowblending_(pipe, small, "L100")
    assert torch.equal(pipe(**sd_call_kwargs(steps=10)).images, reference)
    remove_flowblending_(pipe)
    assert torch.equal(pipe(**sd_call_kwargs(steps=10)).images, reference)
    router = apply_flowblending_(pipe, small, "L40-S40-L20")
    pipe(**sd_call_kwargs(steps=10))
    assert family_for(pipe).name == "unet"
    assert [m for _, m in router.last_run.trace] == LSL_10
    assert router.last_run.calls_per_model == {"large": 6, "small": 4}


def test_sd_pair_mismatch_names_cross_attention_dim(unet_pair):
    from flowblending_accel.tiny_models import tiny_unet

    pipe = tiny_sd_pipeline(unet_pair[0])
    small = tiny_unet((16, 32), 1)
    small.register_to_config(cross_attention_dim=64)
    with pytest.raises(ValueError, match="small config.cross_attention_dim=64"):
        apply_flowblending_(pipe, small)


# -------------------------------------------------------------------------------------------- Wan 2.2
def test_wan22_routes_inside_both_experts_and_composes_with_boundary():
    high, small = tiny_wan_pair()
    low, _ = tiny_wan_pair(seed=7)
    pipe = tiny_wan_pipeline(high, transformer_2=low, boundary_ratio=0.7)
    apply_flowblending_(pipe, small, "L40-S40-L20")
    assert family_for(pipe).name == "wan"
    computed = {"high": 0, "low": 0, "small": 0}

    def count(name):
        return lambda *_: computed.__setitem__(name, computed[name] + 1)

    high.blocks[0].register_forward_pre_hook(count("high"))  # block hooks count computes, not calls
    low.blocks[0].register_forward_pre_hook(count("low"))
    small.blocks[0].register_forward_pre_hook(count("small"))
    pipe(**wan_call_kwargs(steps=20))
    stats = flowblending_stats(pipe)
    models = ["large"] * 8 + ["small"] * 8 + ["large"] * 4
    assert [m for _, m in stats.trace] == models
    assert stats.num_steps == 20 and stats.calls_per_model == {"large": 24, "small": 16}

    pipe.scheduler.set_timesteps(20)
    in_high = [float(t) >= 700 for t in pipe.scheduler.timesteps]
    # The pipeline's boundary picks the expert, the router picks large or small inside it.
    assert computed["high"] == 2 * sum(h and m == "large" for h, m in zip(in_high, models, strict=True))
    assert computed["low"] == 2 * sum(not h and m == "large" for h, m in zip(in_high, models, strict=True))
    assert computed["small"] == 16
    assert any(h and m == "small" for h, m in zip(in_high, models, strict=True))  # small inside both experts
    assert any(not h and m == "small" for h, m in zip(in_high, models, strict=True))


def test_wan22_one_small_per_expert():
    high, small_high = tiny_wan_pair()
    low, small_low = tiny_wan_pair(seed=7)
    pipe = tiny_wan_pipeline(high, transformer_2=low, boundary_ratio=0.8)
    apply_flowblending_(pipe, {"transformer": small_high, "transformer_2": small_low}, "L20-S60-L20")
    used = {"small_high": 0, "small_low": 0}
    small_high.register_forward_pre_hook(lambda *_: used.__setitem__("small_high", used["small_high"] + 1))
    small_low.register_forward_pre_hook(lambda *_: used.__setitem__("small_low", used["small_low"] + 1))
    pipe(**wan_call_kwargs(steps=10))
    assert used["small_high"] > 0 and used["small_low"] > 0
    with pytest.raises(ValueError, match="one small model per routed denoiser"):
        remove_flowblending_(pipe)
        apply_flowblending_(pipe, {"transformer": small_high}, "LSL")


# ------------------------------------------------------------------------------------------- Wan I2V
def test_wan_i2v_expand_timesteps_per_token():
    from diffusers import AutoencoderKLWan, WanImageToVideoPipeline

    large, small = tiny_wan_pair()
    vae = tiny_wan_pipeline(large).vae
    pipe = WanImageToVideoPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
        transformer=large,
        expand_timesteps=True,
    )
    pipe.set_progress_bar_config(disable=True)
    shapes = []
    large.register_forward_pre_hook(
        lambda m, a, kw: shapes.append(tuple(kw["timestep"].shape)), with_kwargs=True
    )
    router = apply_flowblending_(pipe, small, "L40-S40-L20")
    pipe(image=_image(16), **wan_call_kwargs(steps=10))
    assert all(len(s) == 2 for s in shapes)
    assert [m for _, m in router.last_run.trace] == LSL_10
    assert isinstance(vae, AutoencoderKLWan)


# ----------------------------------------------------------------------------------------- registry
def test_registry_is_open():
    class MyVideoPipeline:
        def __init__(self, denoiser):
            self.denoiser = denoiser

    family = register_family(Family("mine", r"MyVideoPipeline", ("denoiser",), ("in_channels",)))
    try:
        assert family_for(MyVideoPipeline(torch.nn.Linear(1, 1))) is family
        assert registered_families()[-1].name == "generic"
    finally:
        from flowblending_accel.core import families

        families._FAMILIES.remove(family)
    with pytest.raises(ValueError, match="already registered"):
        register_family(Family("wan", r"X", ("transformer",), ()))
