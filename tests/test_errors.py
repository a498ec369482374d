"""Every user error fails before denoising with a message naming the field; a crash mid-run loses nothing."""

import pytest
import torch
from diffusers import FirstBlockCacheConfig

from flowblending_accel import (
    FlowBlendingConfig,
    apply_flowblending_,
    flowblending_routers,
    remove_flowblending_,
)
from flowblending_accel.core.diffusers_internals import cached_states
from flowblending_accel.tiny_models import (
    tiny_ltx_transformer,
    tiny_wan_pair,
    tiny_wan_pipeline,
    tiny_wan_transformer,
    wan_call_kwargs,
)


def _count_calls(module):
    calls = []
    module.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def _wan_small(**overrides):
    from diffusers import WanTransformer3DModel

    config = dict(tiny_wan_transformer(2, 2).config)
    config.update(overrides)
    return WanTransformer3DModel(**{k: v for k, v in config.items() if not k.startswith("_")})


@pytest.mark.parametrize(
    "small, error, message",
    [
        (
            lambda: _wan_small(in_channels=8),
            ValueError,
            r"small config.in_channels=8 but pipe.transformer config.in_channels=16",
        ),
        (lambda: _wan_small(out_channels=8), ValueError, r"config.out_channels"),
        (lambda: _wan_small(patch_size=(1, 4, 4)), ValueError, r"config.patch_size"),
        (lambda: _wan_small(text_dim=64), ValueError, r"config.text_dim"),
        (
            lambda: tiny_ltx_transformer(),
            TypeError,
            r"small is a LTXVideoTransformer3DModel but pipe.transformer",
        ),
        (
            lambda: tiny_wan_transformer(2, 2).to("meta"),
            ValueError,
            r"small model is on meta .*`small.to\('cpu'\)`",
        ),
        (lambda: "not a model", TypeError, r"small must be a torch module"),
    ],
    ids=["in_channels", "out_channels", "patch_size", "text_dim", "class", "device", "type"],
)
def test_pair_mismatch_is_refused_before_denoising(small, error, message):
    pipe = tiny_wan_pipeline()
    calls = _count_calls(pipe.transformer)
    with pytest.raises(error, match=message):
        apply_flowblending_(pipe, small(), "L40-S40-L20")
    assert calls == [] and flowblending_routers(pipe) == []


def test_same_module_is_refused():
    pipe = tiny_wan_pipeline()
    with pytest.raises(ValueError, match="same module as pipe.transformer"):
        apply_flowblending_(pipe, pipe.transformer)


def test_malformed_schedule_and_axis():
    pipe = tiny_wan_pipeline()
    small = tiny_wan_transformer(2, 2)
    with pytest.raises(ValueError, match="sum to 90"):
        apply_flowblending_(pipe, small, "L40-S30-L20")
    with pytest.raises(ValueError, match="axis='noise'"):
        apply_flowblending_(pipe, small, FlowBlendingConfig("LSL", axis="noise"))
    with pytest.raises(TypeError, match="the config must be a FlowBlendingConfig or a schedule string"):
        apply_flowblending_(pipe, small, 0.4)
    with pytest.raises(TypeError, match="unexpected keyword argument 'shedule'"):
        apply_flowblending_(pipe, small, FlowBlendingConfig(shedule="LSL"))
    with pytest.raises(TypeError, match=r"accelerators='fbc:0.05' is one member: give a list"):
        FlowBlendingConfig("LSL", accelerators="fbc:0.05")
    with pytest.raises(ValueError, match="accelerator 'teacache' is unknown"):
        FlowBlendingConfig("LSL", accelerators=["teacache"])  # parsed when the config is made
    assert flowblending_routers(pipe) == []


def test_unknown_pipeline_and_denoiser():
    class NoDenoiserPipeline:
        components = {}

    with pytest.raises(ValueError, match="NoDenoiserPipeline has no denoiser FlowBlending knows"):
        apply_flowblending_(NoDenoiserPipeline(), tiny_wan_transformer(2, 2))
    pipe = tiny_wan_pipeline()
    with pytest.raises(ValueError, match="denoisers names 'transformer_2'"):
        apply_flowblending_(
            pipe, tiny_wan_transformer(2, 2), FlowBlendingConfig(denoisers=("transformer_2",))
        )


def test_applied_twice_and_removed_twice():
    pipe = tiny_wan_pipeline()
    apply_flowblending_(pipe, tiny_wan_transformer(2, 2))
    with pytest.raises(ValueError, match="already applied .* remove_flowblending_"):
        apply_flowblending_(pipe, tiny_wan_transformer(2, 2))
    remove_flowblending_(pipe)
    with pytest.raises(ValueError, match="not applied"):
        remove_flowblending_(pipe)


def test_config_object_form():
    pipe = tiny_wan_pipeline()
    router = apply_flowblending_(
        pipe, tiny_wan_transformer(2, 2), FlowBlendingConfig("L50-S50", axis="sigma")
    )
    assert str(router.schedule) == "L50-S50" and router.schedule.axis == "sigma"


def test_small_moved_after_apply_follows_the_large_model_again_at_run_start():
    pipe = tiny_wan_pipeline()
    small = tiny_wan_transformer(2, 2)
    apply_flowblending_(pipe, small, "L40-S40-L20")
    reference = pipe(**wan_call_kwargs(steps=10)).frames
    small.to(torch.float64)  # the large model (a pipeline component) decides the placement
    assert torch.equal(pipe(**wan_call_kwargs(steps=10)).frames, reference)
    assert next(small.parameters()).dtype == torch.float32


def _states(module):
    return cached_states(module)


def test_exception_in_small_mid_run_leaves_everything_reusable():
    large, small = tiny_wan_pair()
    large.enable_cache(FirstBlockCacheConfig(threshold=0.05))
    small.enable_cache(FirstBlockCacheConfig(threshold=0.05))
    pipe = tiny_wan_pipeline(large)
    router = apply_flowblending_(pipe, small, "L40-S40-L20")
    fresh = pipe(**wan_call_kwargs(steps=10)).frames

    calls = []

    def explode(*_):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected failure in the small model")

    handle = small.register_forward_pre_hook(explode)
    with pytest.raises(RuntimeError, match="injected failure"):
        pipe(**wan_call_kwargs(steps=10))
    handle.remove()

    failed = router.runs[-1]
    assert failed.aborted and "injected failure" in failed.error and router.session is None
    assert _states(large) == 0 and _states(small) == 0
    assert torch.equal(pipe(**wan_call_kwargs(steps=10)).frames, fresh)
    assert router.last_run.finished


def test_keyboard_interrupt_between_steps_is_recovered_at_next_run():
    pipe = tiny_wan_pipeline()
    small = tiny_wan_transformer(2, 2)
    router = apply_flowblending_(pipe, small, "L40-S40-L20")
    fresh = pipe(**wan_call_kwargs(steps=10)).frames

    def interrupt(pipeline, step, timestep, callback_kwargs):
        if step == 5:
            raise KeyboardInterrupt
        return callback_kwargs

    with pytest.raises(KeyboardInterrupt):
        pipe(**wan_call_kwargs(steps=10, callback_on_step_end=interrupt))
    assert torch.equal(pipe(**wan_call_kwargs(steps=10)).frames, fresh)
    assert router.runs[-2].aborted and router.runs[-1].finished
