"""ModelRouter on the real WanPipeline (tiny random weights): exactness, routing, counts."""

import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from manual_loops import manual_wan

from flowblending_accel import (
    FlowBlendingConfig,
    ModelRouter,
    apply_flowblending_,
    flowblending_stats,
    remove_flowblending_,
)
from flowblending_accel.core.named_schedulers import make_scheduler
from flowblending_accel.tiny_models import tiny_wan_pipeline, wan_call_kwargs

SCHEDULERS = {
    "euler": lambda: FlowMatchEulerDiscreteScheduler(shift=5.0),
    "unipc": lambda: UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0
    ),
    "dpm++": lambda: DPMSolverMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0
    ),
    "heun": lambda: FlowMatchHeunDiscreteScheduler(shift=5.0),
    "dpm++2s": lambda: make_scheduler("dpm++2s"),
}


def run(pipe, **kwargs):
    return pipe(**wan_call_kwargs(**kwargs)).frames


def test_all_large_is_bit_identical_and_removal_restores(wan_pipe, wan_pair):
    reference = run(wan_pipe, steps=12)
    original_forward = type(wan_pipe.transformer).forward
    router = apply_flowblending_(wan_pipe, wan_pair[1], "L100")
    assert isinstance(router, ModelRouter)
    assert torch.equal(run(wan_pipe, steps=12), reference)
    assert router.last_run.calls_per_model == {"large": 24}
    remove_flowblending_(wan_pipe)
    assert "forward" not in wan_pipe.transformer.__dict__
    assert wan_pipe.transformer.forward.__func__ is original_forward
    assert torch.equal(run(wan_pipe, steps=12), reference)


def test_router_keeps_transformer_identity(wan_pipe, wan_pair, tmp_path):
    large = wan_pipe.transformer
    config = dict(large.config)
    components = set(wan_pipe.components)
    state_keys = list(large.state_dict())
    apply_flowblending_(wan_pipe, wan_pair[1])
    assert wan_pipe.transformer is large and type(large).__name__ == "WanTransformer3DModel"
    assert dict(large.config) == config and set(wan_pipe.components) == components
    assert not any(p is q for p in large.parameters() for q in wan_pair[1].parameters())
    assert list(large.state_dict()) == state_keys  # small is not a submodule of large
    large.save_pretrained(tmp_path)  # the hook does not leak into serialisation
    assert (tmp_path / "config.json").exists()


def test_consecutive_routed_runs_are_bit_identical(wan_pipe, wan_pair):
    apply_flowblending_(wan_pipe, wan_pair[1], "L40-S40-L20")
    first, second = run(wan_pipe, steps=10), run(wan_pipe, steps=10)
    assert torch.equal(first, second)


@pytest.mark.parametrize("scheduler_name", list(SCHEDULERS))
@pytest.mark.parametrize("guidance_scale", [5.0, 1.0], ids=["cfg", "no-cfg"])
def test_paper_split_at_50_steps_matches_manual_loop(wan_pair, scheduler_name, guidance_scale):
    large, small = wan_pair
    pipe = tiny_wan_pipeline(large, SCHEDULERS[scheduler_name]())
    models = ["large"] * 20 + ["small"] * 20 + ["large"] * 10
    kwargs = wan_call_kwargs(steps=50, guidance_scale=guidance_scale)
    expected = manual_wan(pipe, large, small, models, kwargs)

    router = apply_flowblending_(pipe, small, "L40-S40-L20")
    routed = run(pipe, steps=50, guidance_scale=guidance_scale)
    stats = router.last_run

    assert torch.equal(routed, expected)
    assert stats.finished and not stats.aborted
    assert stats.trace == list(enumerate(models))
    assert stats.steps_per_model == {"large": 30, "small": 20} and stats.switches == 2
    branches = 2 if guidance_scale > 1 else 1
    if scheduler_name == "heun":
        # 99 loop iterations: every step has a predictor and a corrector, except the last (Euler to 0).
        assert stats.calls_per_model == {"large": (40 + 19) * branches, "small": 40 * branches}
        per_step = {}
        for call in stats.calls:
            per_step.setdefault(call.step, set()).add(call.model)
        assert all(len(models_used) == 1 for models_used in per_step.values())  # no step split
    else:
        assert stats.calls_per_model == {"large": 30 * branches, "small": 20 * branches}


def test_cfg_branches_stay_on_the_model_of_the_step(wan_pipe, wan_pair):
    router = apply_flowblending_(wan_pipe, wan_pair[1], "L40-S40-L20")
    run(wan_pipe, steps=10)
    trace = router.last_run.call_trace
    assert trace[0::2] == trace[1::2]  # cond and uncond of every step
    assert [model for _, model in trace[0::2]] == ["large"] * 4 + ["small"] * 4 + ["large"] * 2


def test_stats_record_timesteps_sigmas_and_time(wan_pipe, wan_pair):
    router = apply_flowblending_(wan_pipe, wan_pair[1], FlowBlendingConfig("L40-S40-L20", count_flops=True))
    run(wan_pipe, steps=10)
    stats = flowblending_stats(wan_pipe)
    wan_pipe.scheduler.set_timesteps(10)
    assert [c.timestep for c in stats.calls[0::2]] == pytest.approx(wan_pipe.scheduler.timesteps.tolist())
    assert [c.sigma for c in stats.calls[0::2]] == pytest.approx(wan_pipe.scheduler.sigmas[:10].tolist())
    assert set(stats.seconds_per_model) == {"large", "small"} and all(
        v > 0 for v in stats.seconds_per_model.values()
    )
    flops = stats.flops_per_model
    assert flops["large"] / 12 > flops["small"] / 8 > 0  # per call, the large model costs more
    assert set(stats.seconds_per_stage) == {0, 1, 2}
    assert "large" in stats.table() and stats.to_dict()["steps_per_model"] == {"large": 6, "small": 4}
    assert router.runs[-1] is stats


def test_sigma_axis_routes_by_noise_level(wan_pipe, wan_pair):
    router = apply_flowblending_(wan_pipe, wan_pair[1], FlowBlendingConfig("L40-S40-L20", axis="sigma"))
    run(wan_pipe, steps=20)
    for call in router.last_run.calls:
        progress = 1 - call.sigma
        assert call.model == ("small" if 0.4 <= progress < 0.8 else "large")


def test_scheduler_swapped_after_apply_is_used(wan_pipe, wan_pair):
    router = apply_flowblending_(wan_pipe, wan_pair[1], "L40-S40-L20")
    wan_pipe.scheduler = SCHEDULERS["unipc"]()
    run(wan_pipe, steps=25)
    assert router.last_run.scheduler == "UniPCMultistepScheduler"
    assert router.last_run.steps_per_model == {"large": 15, "small": 10}


def test_plan_preview_matches_the_run(wan_pipe, wan_pair):
    router = apply_flowblending_(wan_pipe, wan_pair[1], "L40-S40-L20")
    plan = router.plan(13)
    run(wan_pipe, steps=13)
    assert router.last_run.trace == [(p.step, p.model) for p in plan.steps]


def test_guidance_free_small_stage_skips_the_uncond_call(wan_pipe, wan_pair):
    """small_guidance='off' (the paper's LDL with a distilled small model): small steps make one call, and a
    small-only run equals the same run without CFG, bit for bit."""
    router = apply_flowblending_(
        wan_pipe, wan_pair[1], FlowBlendingConfig("L40-S40-L20", small_guidance="off")
    )
    run(wan_pipe, steps=10)
    assert router.last_run.calls_per_model == {"large": 12, "small": 4}
    assert router.last_run.skipped_uncond_calls == 4
    router.set_schedule("S100")
    guided = run(wan_pipe, steps=10, guidance_scale=5.0)
    assert router.last_run.calls_per_model == {"small": 10}
    remove_flowblending_(wan_pipe)
    apply_flowblending_(wan_pipe, wan_pair[1], "S100")
    assert torch.equal(guided, run(wan_pipe, steps=10, guidance_scale=1.0))
    remove_flowblending_(wan_pipe)


def test_the_guidance_free_stage_is_an_interceptor_like_any_other(wan_pipe, wan_pair):
    """The router holds no CFG logic: small_guidance='off' adds one interceptor, and the same interceptor
    added by hand to a router with small_guidance='on' gives the same calls, skips and output."""
    from flowblending_accel.core.guidance_free import GuidanceFreeSmallStage

    router = apply_flowblending_(
        wan_pipe, wan_pair[1], FlowBlendingConfig("L40-S40-L20", small_guidance="off")
    )
    assert [type(listener) for listener in router.listeners] == [GuidanceFreeSmallStage]
    built_in = run(wan_pipe, steps=10)
    remove_flowblending_(wan_pipe)
    router = apply_flowblending_(wan_pipe, wan_pair[1], "L40-S40-L20")
    assert router.listeners == ()
    router.add_listener(GuidanceFreeSmallStage())
    assert torch.equal(built_in, run(wan_pipe, steps=10))
    assert router.last_run.calls_per_model == {"large": 12, "small": 4}
    assert router.last_run.skipped_uncond_calls == 4
    remove_flowblending_(wan_pipe)


def test_guidance_free_small_stage_needs_split_cfg(ltx_pair):
    from flowblending_accel.tiny_models import tiny_ltx_pipeline

    with pytest.raises(
        ValueError, match="small_guidance='off' needs a pipeline that makes one denoiser call per CFG"
    ):
        apply_flowblending_(
            tiny_ltx_pipeline(ltx_pair[0]), ltx_pair[1], FlowBlendingConfig("LSL", small_guidance="off")
        )
