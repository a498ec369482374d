"""The small model follows what a diffusers user does to the wrapped pipeline, in either order: outputs stay
those of the unwrapped pipeline (all-large), and the small model ends up in the large model's state."""

import importlib.util

import pytest
import torch

from flowblending_accel import apply_flowblending_, flowblending, remove_flowblending_
from flowblending_accel.hooks import group_offloading_of, layerwise_casting_of
from flowblending_accel.testing import (
    sd_call_kwargs,
    tiny_sd_pipeline,
    tiny_unet_pair,
    tiny_wan_pair,
    tiny_wan_pipeline,
    wan_call_kwargs,
)

CPU = torch.device("cpu")


def _wan():
    large, small = tiny_wan_pair()
    return tiny_wan_pipeline(large), small, lambda: wan_call_kwargs(steps=6), "frames"


def _sd():
    large, small = tiny_unet_pair()
    return tiny_sd_pipeline(large), small, lambda: sd_call_kwargs(steps=6), "images"


def _processors(model):
    return {type(p).__name__ for p in model.attn_processors.values()}


SWITCHES = {
    "dtype": (
        _wan,
        lambda pipe: pipe.to(dtype=torch.float64),
        lambda s: next(s.parameters()).dtype == torch.float64,
    ),
    "layerwise casting": (
        _wan,
        lambda pipe: pipe.transformer.enable_layerwise_casting(
            storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32
        ),
        lambda s: layerwise_casting_of(s) == (torch.float8_e4m3fn, torch.float32),
    ),
    "model cpu offload": (
        _wan,
        lambda pipe: pipe.enable_model_cpu_offload(device="cpu"),
        lambda s: hasattr(s, "_hf_hook"),
    ),
    "group offload": (
        _wan,
        lambda pipe: pipe.enable_group_offload(
            onload_device=CPU, offload_device=CPU, offload_type="block_level", num_blocks_per_group=1
        ),
        lambda s: group_offloading_of(s) is not None,
    ),
    "attention slicing": (
        _sd,
        lambda pipe: pipe.enable_attention_slicing(),
        lambda s: _processors(s) == {"SlicedAttnProcessor"},
    ),
    "fused qkv": (
        _sd,
        lambda pipe: pipe.fuse_qkv_projections(),
        lambda s: any(getattr(m, "fused_projections", False) for m in s.modules()),
    ),
    "freeu": (
        _sd,
        lambda pipe: pipe.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4),
        lambda s: s.up_blocks[0].b1 == 1.2,
    ),
}


@pytest.mark.parametrize("order", ["move then wrap", "wrap then move"])
@pytest.mark.parametrize("name", list(SWITCHES))
def test_small_model_follows_the_pipeline(name, order):
    build, switch, followed = SWITCHES[name]
    pipe, small, kwargs, field = build()
    if order == "move then wrap":
        switch(pipe)
        reference = getattr(pipe(**kwargs()), field)
        router = apply_flowblending_(pipe, small, "L100")
        routed = getattr(pipe(**kwargs()), field)
    else:
        router = apply_flowblending_(pipe, small, "L100")
        switch(pipe)
        routed = getattr(pipe(**kwargs()), field)
        remove_flowblending_(pipe)
        reference = getattr(pipe(**kwargs()), field)
        router = apply_flowblending_(pipe, small, "L100")
    assert torch.equal(routed, reference)  # all-large: the switch changed nothing the router did
    router.set_schedule("L40-S40-L20")
    blended = getattr(pipe(**kwargs()), field)  # no refusal: the small model followed
    assert (
        followed(small)
        and blended.isfinite().all()
        and router.last_run.steps_per_model == {"large": 3, "small": 3}
    )
    remove_flowblending_(pipe)


def test_model_cpu_offload_puts_the_small_model_back_after_each_run():
    pipe, small, kwargs, _ = _wan()
    pipe.enable_model_cpu_offload(device="cpu")
    with flowblending(pipe, small, "L40-S40-L20"):
        pipe(**kwargs())
        assert hasattr(small, "_hf_hook")
    assert not hasattr(small, "_hf_hook")  # the hook FlowBlending gave the small model goes with it


@pytest.mark.parametrize("order", ["move then wrap", "wrap then move"])
def test_routing_survives_model_cpu_offload_and_removal_leaves_none(order):
    pipe, small, kwargs, _ = _wan()
    reference_pipe, _, _, _ = _wan()
    reference_pipe.enable_model_cpu_offload(device="cpu")
    if order == "move then wrap":
        pipe.enable_model_cpu_offload(device="cpu")
    router = apply_flowblending_(pipe, small, "L40-S40-L20")
    if order == "wrap then move":
        pipe.enable_model_cpu_offload(device="cpu")
    for _ in range(2):  # every call ends by removing and re-adding accelerate's hooks
        pipe(**kwargs())
        assert router.last_run.steps_per_model == {"large": 3, "small": 3}
    remove_flowblending_(pipe)
    runs = len(router.runs)
    assert torch.equal(pipe(**kwargs()).frames, reference_pipe(**kwargs()).frames)
    assert len(router.runs) == runs  # the removed router never runs again


def test_slicing_turned_off_again_is_followed():
    pipe, small, kwargs, _ = _sd()
    with flowblending(pipe, small, "L40-S40-L20"):
        pipe.enable_attention_slicing()
        pipe(**kwargs())
        assert _processors(small) == {"SlicedAttnProcessor"}
        pipe.disable_attention_slicing()
        pipe(**kwargs())
        assert "SlicedAttnProcessor" not in _processors(small)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="device moves need a second device: a CUDA GPU")
def test_small_model_follows_a_device_move():
    pipe, small, kwargs, _ = _wan()
    with flowblending(pipe, small, "L40-S40-L20"):
        pipe.to("cuda")
        pipe(**kwargs())
        assert next(small.parameters()).is_cuda


@pytest.mark.skipif(
    importlib.util.find_spec("xformers") is None or not torch.cuda.is_available(),
    reason="xformers attention needs the xformers package and a CUDA GPU",
)
def test_small_model_follows_xformers_attention():
    pipe, small, kwargs, _ = _sd()
    pipe.to("cuda")
    with flowblending(pipe, small, "L40-S40-L20"):
        pipe.enable_xformers_memory_efficient_attention()
        pipe(**kwargs())
        assert _processors(small) == {"XFormersAttnProcessor"}
