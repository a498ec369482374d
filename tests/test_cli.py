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


def test_a_commands_usage_error_names_the_command_as_typed(capsys):
    assert main(["bench", "--steps", "-5"]) == 2
    assert capsys.readouterr().err == (
        "flowblending-accel bench: error: argument --steps: must be at least 1, got -5; see "
        "`flowblending-accel bench --help`.\n"
    )


def test_an_unknown_flag_points_to_its_commands_help(capsys):
    assert main(["tune", "--output", "o", "--bogus", "1"]) == 2
    assert capsys.readouterr().err == (
        "flowblending-accel tune: error: unrecognized arguments: --bogus 1; see "
        "`flowblending-accel tune --help`.\n"
    )
    assert main(["--bogus"]) == 2
    assert "see `flowblending-accel --help`" in capsys.readouterr().err


def test_check_update_without_expected_writes_the_default_file_and_says_where(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["check"]) == 2  # nothing to compare with yet: the refusal says how to make it
    assert "run `flowblending-accel check --update --scenario NAME ...` once" in capsys.readouterr().err
    assert main(["check", "--update", "--scenario", "tiny-lsl"]) == 0
    assert "writing the expected values to flowblending-expected.csv" in capsys.readouterr().err
    assert "tiny-lsl,calls.large," in (tmp_path / "flowblending-expected.csv").read_text()
    assert main(["check"]) == 0  # the default file is read when it is there
