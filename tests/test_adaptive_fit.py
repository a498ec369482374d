"""Fitting an adaptive schedule's threshold: one settling pass predicts every threshold's boundaries and FLOPs
exactly; calibrate and tune fit it on a tiny Wan folder."""

import json

import pytest
import torch

from flowblending_accel import FlowBlendingConfig, Schedule, flowblending
from flowblending_accel.analysis.adaptive_fit import (
    record_settling,
    threshold_at_flops,
    threshold_passing,
    threshold_within,
)
from flowblending_accel.analysis.scores import passes
from flowblending_accel.analysis.tune import Point
from flowblending_accel.cli import main
from flowblending_accel.tiny_models import (
    save_tiny_folders,
    text_embeddings,
    tiny_wan_pipeline,
    wan_call_kwargs,
)

WINDOW = Schedule.adaptive_window("L20:70-S-L20")
PROMPTS = ["a cat playing guitar", "a dog on the moon", "a polar bear washing dishes", "a teddy bear"]


def calls(seeds=((1, 2, 3), (4, 5, 6))):
    """Two batched calls of three samples, each sample with its own noise."""
    positive, negative = text_embeddings(batch=3)
    return [
        wan_call_kwargs(steps=10)
        | dict(
            prompt_embeds=positive,
            negative_prompt_embeds=negative,
            generator=[torch.Generator().manual_seed(seed) for seed in batch],
        )
        for batch in seeds
    ]


def test_one_settling_pass_predicts_every_thresholds_boundaries_and_flops(wan_pair):
    large, small = wan_pair
    pipe = tiny_wan_pipeline(large)
    settling, _ = record_settling(pipe, small, calls(), WINDOW, lambda output: output.frames)
    assert settling.window == (2, 7) and settling.late_start == 8 and len(settling.differences) == 6
    flops = {"large": 10.0, "small": 1.0}
    thresholds = settling.thresholds()
    assert thresholds[0] == 0 and thresholds == sorted(thresholds)
    for threshold in (thresholds[0], thresholds[len(thresholds) // 2], thresholds[-1]):
        boundaries, spent = [], 0.0
        for kwargs in calls():
            config = FlowBlendingConfig(WINDOW.with_threshold(threshold), timing="off")
            with flowblending(pipe, small, config) as router:
                pipe(**kwargs)
            boundaries += router.last_run.boundaries
            counted = router.last_run.batch_calls_per_model
            spent += sum(count * flops[model] for model, count in counted.items()) / (2 * 10 * flops["large"])
        assert boundaries == settling.boundaries(threshold)
        assert settling.flop_ratio(threshold, flops) == pytest.approx(spent / 2)
    # Higher thresholds switch earlier: the FLOPs only fall, and the fits pick from that order.
    ratios = [settling.flop_ratio(t, flops) for t in thresholds]
    assert ratios == sorted(ratios, reverse=True) and ratios[0] > ratios[-1]
    within = threshold_within(settling, ratios[2], flops)
    assert within <= thresholds[2] and settling.flop_ratio(within, flops) <= ratios[2]
    assert threshold_within(settling, ratios[-1] - 0.01, flops) is None
    assert threshold_at_flops(settling, (ratios[1] + 0.001), flops) == thresholds[1]
    # A tolerance that only the latest layout meets keeps threshold 0; one nothing meets gives None.
    verify = lambda t: {"score": 1.0 - t}  # noqa: E731 (quality falling with the threshold)
    assert threshold_passing(settling, verify, {"score": 1.0})[0] == 0
    assert threshold_passing(settling, verify, {"score": 1.0 - thresholds[3]})[0] == thresholds[3]
    assert threshold_passing(settling, verify, {"score": 2.0}) is None


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    root = tmp_path_factory.mktemp("adaptive")
    large, small = save_tiny_folders(root, "wan")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    size = ["--height", "16", "--width", "16", "--frames", "5", "--steps", "10"]
    return ["--large", large, "--small", small, "--prompts", str(root / "prompts.txt"), *size]


def test_calibrate_fits_the_threshold_within_a_flop_budget(wan, tmp_path):
    argv = ["calibrate", *wan, "--scorers", "psnr", "--seeds", "2", "--holdout-seeds", "1"]
    assert (
        main([*argv, "--adaptive", "L20:60-S-L20", "--flop-budget", "0.75", "--output", str(tmp_path)]) == 0
    )
    document = json.loads((tmp_path / "calibration.json").read_text())
    result = document["calibration"]
    schedule = Schedule.parse(result["schedule"])
    assert schedule.adaptive is not None and schedule.adaptive_text() == "L20:60-S-L20"
    assert result["flop_ratio"] <= 0.75 and result["settling"]["window"] == [2, 6]
    assert document["held_out"]["rows"]["calibrated"]["schedule"] == result["schedule"]
    assert "adaptive" in result["measure"] and "sigma axis" not in (tmp_path / "calibration.md").read_text()


def test_an_adaptive_calibration_run_again_reads_every_call_from_its_journal(wan, tmp_path):
    """The settling pass and the verifications are journalled jobs: the same command again (a resume after
    a preemption, say) makes no pipeline call and writes the same calibration."""
    argv = ["calibrate", *wan, "--scorers", "psnr", "--seeds", "1", "--holdout-seeds", "1"]
    argv += ["--adaptive", "L20:60-S-L20", "--flop-budget", "0.8", "--output", str(tmp_path)]
    assert main(argv) == 0

    def lines():  # the journalled calls (a run line is added per run)
        text = "".join(path.read_text() for path in (tmp_path / "journal").glob("*.jsonl"))
        return [line for line in text.splitlines() if '"kind": "call"' in line]

    first, journalled = json.loads((tmp_path / "calibration.json").read_text()), lines()
    assert any('"pass": "settling"' in line for line in journalled)
    assert main(argv) == 0
    again = json.loads((tmp_path / "calibration.json").read_text())
    assert lines() == journalled  # nothing new was made
    assert again["calibration"] == first["calibration"]


def test_a_window_without_its_floor_and_ceiling_is_refused_at_the_edge(wan, no_loading, tmp_path, capsys):
    assert main(["calibrate", *wan, "--adaptive", "L40-S40-L20", "--output", str(tmp_path)]) == 2
    assert "adaptive window 'L40-S40-L20': write the floor and ceiling" in capsys.readouterr().err
    assert main(["tune", *wan, "--adaptive", "L20:60-S-L40", "--output", str(tmp_path)]) == 2
    assert "must be positive and leave the small stage room" in capsys.readouterr().err


def test_tune_takes_an_adaptive_stack_to_compare():
    point = Point.parse("L20:60~0.05-S-L20 dpm++:6", 10)
    assert point.adaptive == "L20:60~0.05-S-L20" and point.steps == 6 and point.solver == "dpm++"
    assert point.schedule == "L20:60~0.05-S-L20" and point.label() == "L20:60~0.05-S-L20 dpm++:6"
    with pytest.raises(ValueError, match="a feature cache cannot run under an adaptive schedule"):
        Point.parse("L20:60~0.05-S-L20 fbc:0.1", 10)


@pytest.mark.slow
def test_tune_searches_the_threshold_as_a_knob(wan, tmp_path):
    argv = ["tune", *wan, "--scorers", "psnr", "ssim", "--seeds", "2", "--holdout-seeds", "1"]
    argv += ["--repeats", "1", "--step-counts", "10", "--cache-thresholds", "--adaptive", "L20:60-S-L20"]
    assert main([*argv, "--output", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "tune.json").read_text())
    adaptive = [e for e in document["evaluations"] if e["adaptive"]]
    assert adaptive and document["space"]["adaptive"] == "L20:60-S-L20"
    goal = document["goal"]["tolerance"]
    passing = [e for e in document["evaluations"] if e["scores"] and passes(e["scores"], goal)]
    cheapest = min(passing, key=lambda e: e["flop_ratio"])
    assert document["chosen"]["schedule"] == cheapest["schedule"]  # adaptive points compete with fixed ones
    assert any(passes(e["scores"], goal) for e in adaptive if e["scores"])
