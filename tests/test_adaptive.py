"""The adaptive boundary: its syntax, its plan, and per-sample routing on real pipelines (tiny weights)."""

from fractions import Fraction

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from flowblending_accel import FlowBlendingConfig, Schedule, apply_flowblending_, flowblending
from flowblending_accel.core.plan import Plan
from flowblending_accel.tiny_models import (
    text_embeddings,
    tiny_ltx_pipeline,
    tiny_wan_pipeline,
    wan_call_kwargs,
)
from flowblending_accel.tiny_models.tiny import ltx_call_kwargs

ADAPTIVE = "L20:60~0.05-S-L20"


# ------------------------------------------------------------------------------------------- syntax
@pytest.mark.parametrize(
    "text, canonical, late",
    [
        ("L20:60~0.05-S-L20", "L20:60~0.05-S-L20", Fraction(1, 5)),
        ("l20:60~.05 s", "L20:60~0.05-S", Fraction(0)),
        ("L0:50~0.00001-S-L10", "L0:50~0.00001-S-L10", Fraction(1, 10)),
        ("L12.5:40~1-S", "L12.5:40~1-S", Fraction(0)),
    ],
)
def test_adaptive_syntax_parses_once_and_round_trips(text, canonical, late):
    schedule = Schedule.parse(text)
    assert str(schedule) == canonical and schedule.adaptive is not None
    assert Schedule.parse(str(schedule)) == schedule
    assert Schedule.from_json(schedule.to_json()) == schedule
    # The stages are the latest layout: large to the ceiling, small, then the final large stage if any.
    assert schedule.stages[0].share == schedule.adaptive.ceiling
    assert sum(s.share for s in schedule.stages if s.model == "large") == schedule.adaptive.ceiling + late


def test_adaptive_schedules_differ_from_fixed_ones_and_by_threshold():
    adaptive = Schedule.parse(ADAPTIVE)
    assert adaptive != Schedule.parse("L60-S20-L20")
    assert adaptive.with_threshold(0.1) == Schedule.parse("L20:60~0.1-S-L20")
    assert Schedule.coerce(adaptive, "sigma").adaptive == adaptive.adaptive  # the axis override keeps it
    assert str(Schedule.adaptive_window("L20:60-S-L20")) == "L20:60~0-S-L20"  # a fit sets the threshold


@pytest.mark.parametrize(
    "text, message",
    [
        ("L20:60-S-L20", "has no threshold"),
        ("L60:20~0.1-S", "0 <= floor < ceiling < 100"),
        ("L20:100~0.1-S", "0 <= floor < ceiling < 100"),
        ("L20:60~0.1-S-L40", "leave the small stage room"),
        ("L20:60~0.1-L20", "malformed"),
        ("S20:60~0.1-L", "malformed"),
        ("L20:60~0.1-S-L20-S", "malformed"),
    ],
)
def test_adaptive_syntax_errors_name_the_fix(text, message):
    with pytest.raises(ValueError, match=message):
        Schedule.parse(text)


def test_plan_marks_the_switch_window():
    plan = Plan.for_scheduler(Schedule.parse(ADAPTIVE), FlowMatchEulerDiscreteScheduler(shift=3.0), 20)
    assert plan.switch_window == (4, 12) and plan.late_start == 16
    assert [p.model for p in plan.steps] == ["large"] * 12 + ["small"] * 4 + ["large"] * 4
    assert "or small from here" in plan.table() and plan.to_dict()["switch_window"] == [4, 12]
    # The first switch needs two large outputs: a floor of 0 starts the window at the third step.
    early = Plan.for_scheduler(Schedule.parse("L0:30~0.1-S"), FlowMatchEulerDiscreteScheduler(), 10)
    assert early.switch_window == (2, 3)
    # A window that holds no step switches every sample at the ceiling, and says so.
    empty = Plan.for_scheduler(Schedule.parse("L0:10~0.1-S-L20"), FlowMatchEulerDiscreteScheduler(), 10)
    assert empty.switch_window == (1, 1) and "holds no step" in empty.advice()[0]


# ------------------------------------------------------------------------------------ tiny Wan batches
SEEDS = (3, 4, 5)


def generators(samples):
    return [torch.Generator().manual_seed(SEEDS[i]) for i in samples]


def batch_kwargs(samples=(0, 1, 2), steps=10):
    """Samples of one batch, each with its own noise (so it can be run alone too)."""
    positive, negative = text_embeddings(batch=len(SEEDS))
    rows = list(samples)
    return wan_call_kwargs(steps=steps) | dict(
        prompt_embeds=positive[rows], negative_prompt_embeds=negative[rows], generator=generators(samples)
    )


def routed(pipe, small, schedule, samples=(0, 1, 2)):
    with flowblending(pipe, small, FlowBlendingConfig(schedule, timing="off")) as router:
        frames = pipe(**batch_kwargs(samples)).frames
    return frames, router.last_run


def splitting_threshold(self_difference: list[float]) -> float:
    """A threshold between the lowest two self-differences: one sample switches there, the next does not."""
    values = sorted(self_difference)
    return (values[0] + values[1]) / 2


def test_each_sample_takes_its_own_boundary_and_matches_running_alone(wan_pair):
    large, small = wan_pair
    pipe = tiny_wan_pipeline(large)
    _, never = routed(pipe, small, "L30:70~0-S-L20")  # never switches early: every self-difference read
    threshold = splitting_threshold(never.self_difference[2])  # what the window's first step (3) reads
    batch, stats = routed(pipe, small, Schedule.parse("L30:70~0-S-L20").with_threshold(threshold))
    assert stats.boundaries[0] != stats.boundaries[1] or stats.boundaries[1] != stats.boundaries[2]
    assert all(3 <= b <= 7 for b in stats.boundaries)  # between the floor (30 %) and the ceiling (70 %)
    assert "mixed" in dict(stats.trace).values()
    for sample, boundary in enumerate(stats.boundaries):
        models = ["large"] * boundary + ["small"] * (8 - boundary) + ["large"] * 2
        assert stats.sample_trace(sample) == list(enumerate(models))
        alone, _ = routed(pipe, small, str(Schedule.from_models(models)), samples=(sample,))
        torch.testing.assert_close(batch[sample], alone[0], rtol=1e-4, atol=1e-5)
    # FLOPs follow the samples: each split call counts for its share of the batch.
    small_steps = sum(8 - b for b in stats.boundaries)
    assert stats.batch_calls_per_model["small"] == pytest.approx(2 * small_steps / 3)
    assert "adaptive: step each sample entered" in stats.table()


@pytest.mark.filterwarnings("ignore:schedule .* ends on the small model")
def test_threshold_zero_is_the_latest_layout_and_a_large_one_the_floor(wan_pair):
    large, small = wan_pair
    pipe = tiny_wan_pipeline(large)
    never, stats = routed(pipe, small, "L20:60~0-S-L20")
    assert stats.boundaries == [6, 6, 6] and stats.trace == list(
        enumerate(["large"] * 6 + ["small"] * 2 + ["large"] * 2)
    )
    fixed, _ = routed(pipe, small, "L60-S20-L20")
    assert torch.equal(never, fixed)
    _, eager = routed(pipe, small, "L20:60~1000-S")
    assert eager.boundaries == [2, 2, 2]  # the floor's step; no return to the large model
    assert eager.steps_per_model == {"large": 2, "small": 8}


@pytest.mark.filterwarnings("ignore:schedule .* ends on the small model")
def test_batched_cfg_keeps_both_branches_of_a_sample_on_one_model(ltx_pair):
    large, small = ltx_pair
    pipe = tiny_ltx_pipeline(large)
    positive, negative = text_embeddings(batch=2)
    mask = torch.ones(2, positive.shape[1])

    def call(samples, schedule):
        kwargs = ltx_call_kwargs(steps=8) | dict(
            prompt_embeds=positive[list(samples)],
            negative_prompt_embeds=negative[list(samples)],
            prompt_attention_mask=mask[list(samples)],
            negative_prompt_attention_mask=mask[list(samples)],
            generator=generators(samples),
        )
        with flowblending(pipe, small, FlowBlendingConfig(schedule, timing="off")) as router:
            return pipe(**kwargs).frames, router.last_run

    _, never = call((0, 1), "L25:75~0-S")
    batch, stats = call((0, 1), f"L25:75~{splitting_threshold(never.self_difference[1])}-S")
    assert len(set(stats.boundaries)) == 2 and stats.batch_samples == 2
    for sample, boundary in enumerate(stats.boundaries):
        alone, _ = call(
            (sample,), str(Schedule.from_models(["large"] * boundary + ["small"] * (8 - boundary)))
        )
        torch.testing.assert_close(batch[sample], alone[0], rtol=1e-4, atol=1e-5)


def test_what_cannot_run_adaptive_is_refused_before_any_work(wan_pair):
    with pytest.raises(ValueError, match="fbc:0.05 cannot run under the adaptive schedule"):
        FlowBlendingConfig(ADAPTIVE, accelerators=["fbc:0.05"])
    with pytest.raises(ValueError, match="small_guidance='off' with the adaptive schedule"):
        FlowBlendingConfig(ADAPTIVE, small_guidance="off")
    large, small = wan_pair
    pipe = tiny_wan_pipeline(large, transformer_2=wan_pair[0], boundary_ratio=0.5)
    with pytest.raises(ValueError, match="follows one denoiser's outputs"):
        apply_flowblending_(pipe, {"transformer": small, "transformer_2": small}, ADAPTIVE)
