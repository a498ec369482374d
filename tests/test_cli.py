import json

import pytest

from flowblending_accel.cli import main


def test_help_reads_like_the_readme(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "plan" in out and "tiny" in out and "L40-S40-L20" in out
    assert main(["plan", "--help"]) == 0
    assert "Lay a schedule onto a scheduler's real step grid" in capsys.readouterr().out


def test_plan_table_and_json(capsys):
    assert (
        main(["plan", "L40-S40-L20", "--steps", "50", "--scheduler", "dpm++", "--flops", "598.9", "62.57"])
        == 0
    )
    out = capsys.readouterr().out
    assert "steps per model: large 30, small 20; stage sizes: [20, 20, 10]" in out
    assert "FLOPs vs large-only: 0.642" in out
    assert main(["plan", "LSL", "--steps", "10", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step_counts"] == {"large": 6, "small": 4}


def test_user_error_exits_2_with_one_line(capsys):
    assert main(["plan", "L40-S50"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sum to 90" in err


@pytest.mark.parametrize("family", ["wan", "ltx", "sd"])
def test_tiny_runs_each_family(capsys, family):
    assert main(["tiny", "--family", family, "--steps", "10"]) == 0
    out = capsys.readouterr().out
    assert "steps per model: large 6, small 4" in out and "run finished" in out
