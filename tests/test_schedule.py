from fractions import Fraction

import pytest
from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

from flowblending_accel import Schedule
from flowblending_accel.core.plan import Plan


def test_parse_paper_setting():
    schedule = Schedule.parse("L40-S40-L20")
    assert [s.model for s in schedule.stages] == ["large", "small", "large"]
    assert [s.share for s in schedule.stages] == [Fraction(2, 5), Fraction(2, 5), Fraction(1, 5)]
    assert str(schedule) == "L40-S40-L20" and schedule.axis == "step"


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("LSL", "L40-S40-L20"),
        ("LSS", "L40-S40-S20"),
        ("lll", "L40-L40-L20"),
        ("L-S-L-S-L", "L20-S20-L20-S20-L20"),
        ("L100", "L100"),
        ("S100", "S100"),
        ("l40 s40 l20", "L40-S40-L20"),
        ("L33.5-S66.5", "L33.5-S66.5"),
        ("S20-L80", "S20-L80"),
        ("LS", "L50-S50"),
    ],
)
def test_parse_forms(text, canonical):
    assert str(Schedule.parse(text)) == canonical


@pytest.mark.parametrize(
    "text, message",
    [
        ("L40-S40-L30", "sum to 110"),
        ("L40-X40-L20", "unknown model letter 'X'"),
        ("L40-S-L20", "for every stage or for none"),
        ("L0-S100", "positive percentage"),
        ("", "malformed"),
        ("40-40-20", "malformed"),
        ("L40-S40-L20%", "malformed"),
    ],
)
def test_parse_errors_name_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        Schedule.parse(text)


def test_bad_axis_and_type():
    with pytest.raises(ValueError, match="axis='time'"):
        Schedule.parse("LSL", axis="time")
    with pytest.raises(TypeError, match="must be a string"):
        Schedule.parse(40)


def test_json_round_trip():
    for text, axis in [("L40-S40-L20", "step"), ("L33.5-S66.5", "sigma"), ("L-S-L-S-L", "step")]:
        schedule = Schedule.parse(text, axis)
        assert Schedule.from_json(schedule.to_json()) == schedule


@pytest.mark.parametrize(
    "steps, expected",
    [(50, [20, 20, 10]), (25, [10, 10, 5]), (10, [4, 4, 2]), (7, [3, 3, 1]), (2, [1, 1, 0]), (1, [0, 1, 0])],
)
def test_step_axis_rounding_is_half_up(steps, expected):
    # Boundaries 0.4N and 0.8N round to the nearest step, halves upward (documented in schedule.py).
    stages = Schedule.parse("L40-S40-L20").stages_for_step_count(steps)
    assert [stages.count(k) for k in range(3)] == expected
    assert stages == sorted(stages)


def test_exact_half_rounds_up():
    assert Schedule.parse("L50-S50").stages_for_step_count(5) == [0, 0, 0, 1, 1]


@pytest.mark.parametrize(
    "scheduler",
    [
        FlowMatchEulerDiscreteScheduler(shift=5.0),
        FlowMatchHeunDiscreteScheduler(shift=5.0),
        UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0),
        DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0),
    ],
    ids=["euler", "heun", "unipc", "dpm++"],
)
def test_plan_paper_split_at_50_steps(scheduler):
    plan = Plan.for_scheduler(Schedule.parse("L40-S40-L20"), scheduler, 50)
    assert plan.step_counts() == {"large": 30, "small": 20}
    assert plan.segments() == [("large", 0, 19), ("small", 20, 39), ("large", 40, 49)]


def test_plan_table_and_flop_share():
    plan = Plan.for_scheduler(Schedule.parse("L40-S40-L20"), FlowMatchEulerDiscreteScheduler(shift=5.0), 10)
    table = plan.table({"large": 10.0, "small": 1.0})
    assert "steps per model: large 6, small 4" in table
    assert plan.flop_ratio({"large": 10.0, "small": 1.0}) == pytest.approx((6 * 10 + 4) / 100)
    assert plan.flop_share({"large": 10.0, "small": 1.0})["small"] == pytest.approx(4 / 64)
    with pytest.raises(ValueError, match="lacks"):
        plan.flop_share({"large": 1.0})
    assert plan.to_dict()["step_counts"] == {"large": 6, "small": 4}


def test_sigma_axis_keeps_noise_layout_across_step_counts():
    schedule = Schedule.parse("L40-S40-L20", axis="sigma")
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    for steps in (10, 25, 50):
        plan = Plan.for_scheduler(schedule, scheduler, steps)
        for planned in plan.steps:
            progress = 1 - planned.noise
            expected = "small" if 0.4 - 1e-9 <= progress < 0.8 - 1e-9 else "large"
            assert planned.model == expected, (steps, planned)


def test_plan_does_not_touch_the_scheduler():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
    scheduler.set_timesteps(7)
    before = scheduler.timesteps.clone()
    Plan.for_scheduler(Schedule.parse("LSL"), scheduler, 50)
    assert scheduler.timesteps.tolist() == before.tolist()
