"""The small model follows what a diffusers user does to the wrapped pipeline, in either order: outputs stay
those of the unwrapped pipeline (all-large), and the small model ends up in the large model's state."""

import importlib.util
import inspect

import pytest
import torch
from optional import needs_group_offload_here

from flowblending_accel import apply_flowblending_, flowblending, remove_flowblending_
from flowblending_accel.core.diffusers_internals import group_offloading_of, layerwise_casting_of
from flowblending_accel.tiny_models import (
    ltx_call_kwargs,
    sd_call_kwargs,
    tiny_ltx_pair,
    tiny_ltx_pipeline,
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


def _ltx():
    large, small = tiny_ltx_pair()
    pipe = tiny_ltx_pipeline(large)

    def kwargs():  # prompt embeddings in the pipeline's dtype, as its text encoder would give them
        found = ltx_call_kwargs(steps=6)
        for name in ("prompt_embeds", "negative_prompt_embeds"):
            found[name] = found[name].to(pipe.vae.dtype)
        return found

    return pipe, small, kwargs, "frames"


def _bfloat16_then_fp8_storage(pipe):
    """What a diffusers user does, in the order diffusers' own tests use."""
    pipe.to(dtype=torch.bfloat16)
    pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)


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
    "bf16 then layerwise casting (wan)": (
        _wan,
        _bfloat16_then_fp8_storage,
        lambda s: layerwise_casting_of(s) == (torch.float8_e4m3fn, torch.bfloat16),
    ),
    "bf16 then layerwise casting (ltx)": (
        _ltx,
        _bfloat16_then_fp8_storage,
        lambda s: layerwise_casting_of(s) == (torch.float8_e4m3fn, torch.bfloat16),
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
@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=needs_group_offload_here) if n == "group offload" else n for n in SWITCHES],
)
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


# Switches that take a value, set twice: the small model follows the second value, not only the kind.
TWICE = {
    "dtype": (
        _wan,
        lambda p: p.to(dtype=torch.float64),
        lambda p: p.to(dtype=torch.float32),
        lambda s: next(s.parameters()).dtype == torch.float32,
    ),
    "attention slicing": (
        _sd,
        lambda p: p.enable_attention_slicing(1),
        lambda p: p.enable_attention_slicing(2),
        lambda s: {p.slice_size for p in s.attn_processors.values()} == {2},
    ),
    "freeu": (
        _sd,
        lambda p: p.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4),
        lambda p: p.enable_freeu(s1=0.8, s2=0.3, b1=1.1, b2=1.3),
        lambda s: s.up_blocks[0].b1 == 1.1,
    ),
}


@pytest.mark.parametrize("order", ["switch then wrap", "wrap then switch"])
@pytest.mark.parametrize("name", list(TWICE))
def test_a_switch_set_again_to_another_value_is_followed(name, order):
    build, first, second, followed = TWICE[name]
    pipe, small, kwargs, field = build()
    if order == "switch then wrap":
        first(pipe)
        router = apply_flowblending_(pipe, small, "L40-S40-L20")
    else:
        router = apply_flowblending_(pipe, small, "L40-S40-L20")
        first(pipe)
    pipe(**kwargs())  # a run start: the small model takes the first value
    second(pipe)
    blended = getattr(pipe(**kwargs()), field)
    assert router.last_run.steps_per_model == {"large": 3, "small": 3} and followed(small)
    reference_pipe, reference_small, _, _ = build()  # the same pair given the second value only
    second(reference_pipe)
    with flowblending(reference_pipe, reference_small, "L40-S40-L20"):
        reference = getattr(reference_pipe(**kwargs()), field)
    assert torch.equal(blended, reference)


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


# Tiny transformers of the families the generic family serves, with inputs of one denoiser call.
def _sd3(layers):
    from diffusers import SD3Transformer2DModel

    model = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=layers,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        caption_projection_dim=16,
        pooled_projection_dim=16,
        out_channels=4,
    )
    inputs = dict(
        hidden_states=torch.randn(1, 4, 8, 8),
        encoder_hidden_states=torch.randn(1, 5, 16),
        pooled_projections=torch.randn(1, 16),
        timestep=torch.tensor([500.0]),
    )
    return model, inputs


def _sana(layers):
    from diffusers import SanaTransformer2DModel

    model = SanaTransformer2DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=4,
        num_layers=layers,
        num_cross_attention_heads=2,
        cross_attention_head_dim=4,
        cross_attention_dim=8,
        caption_channels=8,
        sample_size=8,
        patch_size=1,
    )
    inputs = dict(
        hidden_states=torch.randn(1, 4, 8, 8),
        encoder_hidden_states=torch.randn(1, 5, 8),
        timestep=torch.tensor([500.0]),
    )
    return model, inputs


def _mochi(layers):
    from diffusers import MochiTransformer3DModel

    model = MochiTransformer3DModel(
        patch_size=2,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=layers,
        pooled_projection_dim=16,
        in_channels=4,
        text_embed_dim=16,
        time_embed_dim=4,
        activation_fn="swiglu",
        max_sequence_length=16,
    )
    inputs = dict(
        hidden_states=torch.randn(1, 4, 2, 8, 8),
        encoder_hidden_states=torch.randn(1, 16, 16),
        timestep=torch.tensor([500]),
        encoder_attention_mask=torch.ones(1, 16),
    )
    return model, inputs


def _hunyuan_video(layers):
    from diffusers import HunyuanVideoTransformer3DModel

    model = HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=10,
        num_layers=layers,
        num_single_layers=layers,
        num_refiner_layers=1,
        patch_size=1,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=16,
        pooled_projection_dim=8,
        rope_axes_dim=(2, 4, 4),
    )
    inputs = dict(
        hidden_states=torch.randn(1, 4, 1, 8, 8),
        timestep=torch.tensor([500]),
        encoder_hidden_states=torch.randn(1, 6, 16),
        encoder_attention_mask=torch.ones(1, 6),
        pooled_projections=torch.randn(1, 8),
        guidance=torch.tensor([3000.0]),
    )
    return model, inputs


def _from_pipeline(pair, pipeline, call_kwargs):
    """A tiny pair of a family with a tiny pipeline: the inputs its pipeline gives the denoiser first."""
    from flowblending_accel.metrics.flops import first_call_arguments

    def build(layers):
        large, small = pair()
        pipe = pipeline(large)
        model = large if layers == 2 else small
        args, kwargs = first_call_arguments(pipe, large, call_kwargs())
        return model, dict(inspect.signature(large.forward).bind_partial(*args, **kwargs).arguments)

    return build


def _flux():
    from flowblending_accel.tiny_models import flux_call_kwargs, tiny_flux_pair, tiny_flux_pipeline

    return _from_pipeline(tiny_flux_pair, tiny_flux_pipeline, flux_call_kwargs)


def _stable_diffusion():
    return _from_pipeline(tiny_unet_pair, tiny_sd_pipeline, lambda: sd_call_kwargs(steps=2))


FAMILY_MODELS = {
    "sd3": lambda: _sd3,
    "sana": lambda: _sana,
    "mochi": lambda: _mochi,
    "hunyuan video": lambda: _hunyuan_video,
    "flux": _flux,
    "stable diffusion (unet)": _stable_diffusion,
}


@pytest.mark.parametrize("family", list(FAMILY_MODELS))
def test_bf16_then_layerwise_casting_is_followed_in_every_family(family):
    """``to(dtype=bf16)`` then ``enable_layerwise_casting`` on the large model (Wan and LTX pipelines are
    above): the small model runs on the large model's inputs, its skipped layers in the same dtype."""
    from flowblending_accel.core.follow import Follower

    build = FAMILY_MODELS[family]()
    torch.manual_seed(0)
    large, inputs = build(2)
    small, _ = build(1)
    large.to(dtype=torch.bfloat16)
    large.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    inputs = {
        name: value.to(torch.bfloat16) if torch.is_tensor(value) and value.is_floating_point() else value
        for name, value in inputs.items()
        if name != "timestep"
    } | {"timestep": inputs["timestep"]}
    with torch.no_grad():
        large(**inputs)
        Follower().sync(large, small)
        output = small(**inputs)
    assert layerwise_casting_of(small) == (torch.float8_e4m3fn, torch.bfloat16)
    assert torch.as_tensor(output[0] if isinstance(output, tuple) else output.sample).isfinite().all()
