"""Cost before the work: analyze, calibrate and tune print the pipeline calls they will make before the
first one and the estimated wall time after it, refuse a plan that cannot fit --max-calls or --max-minutes
(naming a smaller plan), and fit at --proxy-size with the pick checked at full size."""

import json

import pytest

from flowblending_accel.analysis import workload as workload_module
from flowblending_accel.analysis.cost import (
    CallPlan,
    WorkloadSizes,
    calibrate_plan,
    check_calls,
    smaller_plan,
)
from flowblending_accel.cli import main
from flowblending_accel.tiny_models import save_tiny_folders

SIZE = ["--height", "16", "--width", "16", "--frames", "5", "--steps", "6"]


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    root = tmp_path_factory.mktemp("cost")
    large, small = save_tiny_folders(root, "wan")
    (root / "prompts.txt").write_text("a cat\na dog\na bear\na fox\n")
    return ["--large", large, "--small", small, "--prompts", str(root / "prompts.txt"), *SIZE]


@pytest.fixture
def no_pipeline_call(monkeypatch):
    """The workload's first pipeline call (its FLOP count) fails the test. Modules that bind the function
    when imported are imported first, so they keep the real one once the test is over."""
    import flowblending_accel.analysis.tune  # noqa: F401
    import flowblending_accel.demo.generate  # noqa: F401

    def called(*args, **kwargs):
        raise AssertionError("a pipeline call was made before the plan was refused")

    monkeypatch.setattr("flowblending_accel.metrics.flops.flops_per_call", called)


def test_a_plan_counts_its_parts_and_a_smaller_one_is_found():
    work = WorkloadSizes(prompts=40, fit_prompts=12, seeds=2, holdout_seeds=4, steps=20, window=2, batch=None)
    plan = calibrate_plan(work, measures=5, budget_goal=False)
    assert dict(plan.parts) == {
        "FLOP count": 1,
        "divergence pass": 2,
        "sensitivity (2 steps)": 20,
        "hand-picked schedule": 2,
        "held-out comparison": 12,
    }
    assert plan.search == ("candidate verification", 5 * (6 + 12) * 2) and plan.at_most == plan.fixed + 180
    flags, smaller = smaller_plan(work, lambda w: calibrate_plan(w, 5, False), 100)
    assert flags == "--seeds 1 --holdout-seeds 1 --sensitivity-window 0" and smaller.at_most == 91
    with pytest.raises(ValueError, match="even the smallest plan .--seeds 1 --holdout-seeds 1"):
        check_calls(work, lambda w: calibrate_plan(w, 5, False), 10)
    assert CallPlan("x", (("a", 2),)).describe() == "x will make 2 pipeline calls (a 2)"


def test_calibrate_over_its_call_budget_is_refused_before_a_call(no_pipeline_call, tmp_path, capsys):
    assert main(["calibrate", "--output", str(tmp_path), "--max-calls", "10"]) == 2  # the embedded pair
    error = capsys.readouterr().err
    assert error.startswith(
        "flowblending-accel calibrate: error: --max-calls 10: calibrate will make at most"
    )
    assert "the smallest plan (--seeds 1 --holdout-seeds 1 --sensitivity-window 0) makes 91" in error


def test_analyze_prints_its_plan_then_the_estimated_wall_time(wan, tmp_path, capsys):
    assert main(["analyze", *wan, "--seeds", "1", "--output", str(tmp_path)]) == 0
    error = capsys.readouterr().err
    plan = error.index("analyze will make 5 pipeline calls (FLOP count 1, divergence pass 4)")
    assert plan < error.index("estimated wall time: at most")
    document = json.loads((tmp_path / "analysis.json").read_text())
    assert document["run"]["planned_at_most"] == 5 and document["run"]["estimated_seconds"] > 0
    assert "- cost: analyze will make 5 pipeline calls" in (tmp_path / "analysis.md").read_text()


def test_a_plan_that_cannot_fit_max_minutes_stops_after_the_first_call(wan, tmp_path, capsys):
    argv = ["analyze", *wan, "--seeds", "1", "--max-minutes", "0.00001", "--output", str(tmp_path)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "error: --max-minutes 1e-05: analyze will make 5 pipeline calls" in error
    assert "calls fit (--max-calls" in error and not (tmp_path / "analysis.json").exists()


def test_proxy_size_fits_small_and_checks_the_pick_at_full_size(wan, tmp_path, monkeypatch):
    sizes = []
    original = workload_module.Workload.calls.fget

    def calls(self):
        found = original(self)
        sizes.extend((call["height"], call["width"], call["num_frames"]) for call in found)
        return found

    monkeypatch.setattr(workload_module.Workload, "calls", property(calls))
    argv = ["calibrate", *wan, "--seeds", "1", "--holdout-seeds", "1", "--sensitivity-window", "0"]
    argv += ["--scorers", "ssim", "--proxy-size", "16x16x1", "--output", str(tmp_path)]
    assert main(argv) == 0
    assert set(sizes) == {(16, 16, 1)}  # the fit set ran at the proxy size
    document = json.loads((tmp_path / "calibration.json").read_text())
    proxy = document["proxy"]
    assert proxy["proxy_size"] == {"height": 16, "width": 16, "num_frames": 1} and isinstance(
        proxy["held"], bool
    )
    report = (tmp_path / "calibration.md").read_text()
    assert "fitted at the proxy size 16x16x1; validated at full size on the held-out prompts" in report
    assert ("**held**" in report) == proxy["held"]


def test_a_bad_proxy_size_is_refused(wan, tmp_path, capsys):
    assert main(["analyze", *wan, "--proxy-size", "16by16", "--output", str(tmp_path)]) == 2
    assert "--proxy-size '16by16': write HEIGHTxWIDTHxFRAMES" in capsys.readouterr().err


def test_tune_under_a_call_budget_below_its_fixed_parts_is_refused(wan, no_pipeline_call, tmp_path, capsys):
    argv = ["tune", *wan, "--scorers", "psnr", "--seeds", "1", "--holdout-seeds", "1", "--repeats", "1"]
    assert main([*argv, "--max-calls", "3", "--output", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "--max-calls 3: tune will make at most" in error and "(it needs at least" in error
