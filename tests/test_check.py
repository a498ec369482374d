"""The CI gate: injected regressions fail naming the metric and both values; wins need --update."""

from dataclasses import replace

import pytest

from flowblending_accel.check.gate import Expectation, compare, read_expected, updated_rows
from flowblending_accel.check.scenarios import SCENARIOS, run_scenario
from flowblending_accel.cli import main


@pytest.fixture(scope="module")
def expected_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("check") / "expected.csv"
    assert main(["check", "--expected", str(path), "--scenario", "tiny-lsl", "tiny-fbc", "--update"]) == 0
    return path


def test_clean_run_passes_and_writes_outputs(expected_file, tmp_path):
    summary, bench = tmp_path / "summary.md", tmp_path / "bench.json"
    assert (
        main(
            [
                "check",
                "--expected",
                str(expected_file),
                "--summary",
                str(summary),
                "--benchmark-json",
                str(bench),
            ]
        )
        == 0
    )
    assert "26 of 26 metrics within their margins" in summary.read_text()
    assert '"name": "tiny-lsl calls.large"' in bench.read_text()


def test_extra_large_step_is_a_regression(expected_file, monkeypatch, capsys):
    from flowblending_accel.core import plan

    original = plan.Plan.build

    def one_more_large_step(cls, schedule, view, first_step=0):
        built = original(schedule, view, first_step)
        steps = tuple(replace(p, model="large") if p.step == 4 else p for p in built.steps)
        return replace(built, steps=steps)

    monkeypatch.setattr(plan.Plan, "build", classmethod(one_more_large_step))
    assert main(["check", "--expected", str(expected_file), "--scenario", "tiny-lsl"]) == 1
    err = capsys.readouterr().err
    assert "tiny-lsl calls.large: expected 12 ± 0.0, got 14 — REGRESSION" in err
    assert "trace_hash" in err


def test_cache_reset_on_switch_disabled_is_a_regression(expected_file, monkeypatch, capsys):
    from flowblending_accel.core import router

    original = router.ModelRouter.enter_step

    def enter_without_reset(self, step):
        self.reset_on_switch = False
        return original(self, step)

    monkeypatch.setattr(router.ModelRouter, "enter_step", enter_without_reset)
    assert main(["check", "--expected", str(expected_file), "--scenario", "tiny-fbc"]) == 1
    err = capsys.readouterr().err
    assert (
        "tiny-fbc segment_starts_full_compute: expected 1.0 ± 0.02, got 0.666" in err and "REGRESSION" in err
    )


def test_improvement_without_update_fails_then_update_passes(tmp_path, expected_file, capsys):
    worse = tmp_path / "expected.csv"
    worse.write_text(
        expected_file.read_text().replace("tiny-lsl,calls.large,12,0.0", "tiny-lsl,calls.large,14,0.0")
    )
    assert main(["check", "--expected", str(worse), "--scenario", "tiny-lsl"]) == 3
    assert "expected 14 ± 0.0, got 12 — IMPROVEMENT (update the expected file)" in capsys.readouterr().err
    assert main(["check", "--expected", str(worse), "--scenario", "tiny-lsl", "--update"]) == 0
    assert "tiny-lsl,calls.large,12,0.0" in worse.read_text()
    assert main(["check", "--expected", str(worse), "--scenario", "tiny-lsl"]) == 0


def test_update_moves_values_only_beyond_a_third_of_the_margin():
    rows = [
        Expectation("s", "attention_skipped.large", 0.40, 0.03),
        Expectation("s", "attention_skipped.small", 0.40, 0.03),
    ]
    measured = {
        "s": {"attention_skipped.large": 0.405, "attention_skipped.small": 0.4234567, "calls.large": 3}
    }
    new = {(r.scenario, r.metric): r for r in updated_rows(rows, measured)}
    assert new["s", "attention_skipped.large"].expected == 0.40  # within a third: unchanged, no churn
    assert new["s", "attention_skipped.small"].expected == 0.4235  # moved, rounded
    assert new["s", "calls.large"].margin == 0.0


def test_bad_expected_file_is_a_usage_error(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("scenario,metric,expected\ns,calls.large,3\n")
    assert main(["check", "--expected", str(bad)]) == 2
    assert "columns are scenario,metric,expected,margin" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown scenario"):
        from argparse import Namespace

        from flowblending_accel.cli.check import _scenarios
        from flowblending_accel.targets.config import Config

        options = dict(target=None, large=None, schedule=None, stack=None)
        _scenarios(Namespace(scenario=["nope"], expected=bad, **options), [], Config())


@pytest.mark.slow
def test_forced_recompile_is_a_regression():
    import torch

    scenario = SCENARIOS["tiny-compile"]
    clean = run_scenario(scenario)
    assert clean["recompiles_after_warmup"] == 0
    expectations = [Expectation("tiny-compile", m, v, 0.0) for m, v in clean.items()]
    forced = run_scenario(scenario, inject=torch._dynamo.reset)
    verdicts = {v.metric: v for v in compare(expectations, {"tiny-compile": forced})}
    assert verdicts["recompiles_after_warmup"].status == "regression"
    assert "expected 0" in verdicts["recompiles_after_warmup"].message
    assert read_expected  # the module's reader is what the CLI uses
