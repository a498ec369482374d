"""A denoiser shared by several pipelines is routed with the scheduler of the pipeline that calls it."""

import torch
from diffusers import (
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    LTXImageToVideoPipeline,
    StableDiffusionImg2ImgPipeline,
    UniPCMultistepScheduler,
)

from flowblending_accel import FlowBlendingConfig, apply_flowblending_, flowblending_stats
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


def _models(stats):
    return [model for _, model in stats.trace]


def test_text_to_image_then_img2img_from_pipe():
    large, small = tiny_unet_pair()
    pipe = tiny_sd_pipeline(large)
    router = apply_flowblending_(pipe, small, "L40-S40-L20")
    img2img = StableDiffusionImg2ImgPipeline.from_pipe(
        pipe, scheduler=EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    )
    img2img.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 32, 32)
    kwargs = {k: v for k, v in sd_call_kwargs(steps=10).items() if k not in ("height", "width")}
    img2img(image=image, strength=0.5, **kwargs)
    stats = router.last_run
    # img2img starts half way down its own 10-step Euler grid: steps 5..9, laid out 40/40/20 over those 5.
    assert stats.scheduler == "EulerDiscreteScheduler" and [s for s, _ in stats.trace] == [5, 6, 7, 8, 9]
    assert _models(stats) == ["large", "large", "small", "small", "large"]
    pipe(**sd_call_kwargs(steps=10))  # and the text-to-image pipeline still routes along its DDIM grid
    assert (
        router.last_run.scheduler == "DDIMScheduler"
        and _models(router.last_run) == ["large"] * 4 + ["small"] * 4 + ["large"] * 2
    )


def test_text_to_video_then_image_to_video_from_pipe():
    large, small = tiny_ltx_pair()
    pipe = tiny_ltx_pipeline(large)
    router = apply_flowblending_(pipe, small, "L40-S40-L20")
    i2v = LTXImageToVideoPipeline.from_pipe(pipe, scheduler=FlowMatchEulerDiscreteScheduler())
    i2v.set_progress_bar_config(disable=True)
    i2v(image=torch.rand(1, 3, 32, 32), **ltx_call_kwargs(steps=10))
    assert (
        router.last_run.finished and _models(router.last_run) == ["large"] * 4 + ["small"] * 4 + ["large"] * 2
    )
    assert router.last_run.scheduler == "FlowMatchEulerDiscreteScheduler"


def test_two_pipelines_share_a_transformer_with_their_own_schedulers():
    large, small = tiny_wan_pair()
    first = tiny_wan_pipeline(large)
    second = tiny_wan_pipeline(
        large, scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True)
    )
    router = apply_flowblending_(first, small, "L40-S40-L20")
    for pipe, steps, scheduler in (
        (first, 20, "FlowMatchEulerDiscreteScheduler"),
        (second, 10, "UniPC"),
        (first, 20, "FlowMatch"),
    ):
        pipe(**wan_call_kwargs(steps=steps))
        assert router.last_run.scheduler.startswith(scheduler) and router.last_run.num_steps == steps
        assert router.last_run.steps_per_model == {"large": steps * 6 // 10, "small": steps * 4 // 10}


def test_wan22_two_expert_pipeline_built_from_a_routed_transformer():
    high, small = tiny_wan_pair()
    low, _ = tiny_wan_pair(seed=5)
    wan21 = tiny_wan_pipeline(high)
    apply_flowblending_(wan21, small, "L40-S40-L20")
    wan22 = tiny_wan_pipeline(high, transformer_2=low, boundary_ratio=0.7)
    apply_flowblending_(
        wan22, small, FlowBlendingConfig("L40-S40-L20", denoisers=("transformer_2",))
    )  # the shared one is routed
    wan22(**wan_call_kwargs(steps=10))
    stats = flowblending_stats(wan22)
    assert stats.finished and _models(stats) == ["large"] * 4 + ["small"] * 4 + ["large"] * 2
    wan21(**wan_call_kwargs(steps=10))
    assert flowblending_stats(wan21).steps_per_model == {"large": 6, "small": 4}
