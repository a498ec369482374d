"""Every user error ends before any model is built, as one line on stderr with exit code 2, never a
traceback; and it returns within seconds."""

import time

import pytest

from flowblending_accel.cli import main


@pytest.fixture
def no_models(monkeypatch):
    """Building any model fails the test: the refusal must come before the work."""

    def built(*_, **__):
        raise AssertionError("a model was built before the error was found")

    monkeypatch.setattr("flowblending_accel.targets.embedded.embedded_target", built)
    monkeypatch.setattr("flowblending_accel.targets.presets.preset_target", built)
    monkeypatch.setattr("flowblending_accel.targets.folders.folder_target", built)
    monkeypatch.setattr("flowblending_accel.targets.factory.factory_target", built)
    monkeypatch.setattr("flowblending_accel.demo.models.load_demo_pipeline", built)


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "results"
    path.write_text("not a folder")
    return path


CASES = {
    "bad large size": (
        ["train-demo", "--large-size", "heads=8"],
        "--large-size 'heads=8': write KEY=N with N a positive whole number and KEY one of num_layers",
    ),
    "init from a non-pair": (
        ["train-demo", "--init-from", "runs/no-such-pair"],
        "--init-from runs/no-such-pair: not an exported pair (no model_index.json)",
    ),
    "two caches": (
        ["bench", "--stack", "fbc", "taylorseer"],
        "stack has several feature caches ['fbc:0.05', 'taylorseer']",
    ),
    "tensorrt on cpu": (["bench", "--stack", "dpm++:10", "tensorrt"], "tensorrt needs a CUDA GPU"),
    "cuda without cuda": (["bench", "--target", "random:tiny-wan", "--device", "cuda"], "sees no CUDA GPU"),
    "bad device": (["bench", "--device", "tpu"], "use 'cpu', 'cuda' or 'cuda:N'"),
    "bad value": (
        ["bench", "--stack", "fbc:abc"],
        "accelerator 'fbc:abc': the value must be a positive threshold",
    ),
    "unknown accelerator": (["bench", "--stack", "fbcc"], "accelerator 'fbcc' is unknown"),
    "unknown preset": (
        ["bench", "--target", "random:wan9-1t", "--dtype", "float32"],
        "random preset 'wan9-1t' is unknown",
    ),
    "one clip": (["demo", "--prompts", "a 3 moving right"], "the Fréchet distance needs at least 2"),
    "bad prompt": (["demo", "--prompts", "a cat", "a dog"], "not in the demo's language"),
    "plan steps 0": (["plan", "--steps", "0"], "argument --steps: must be at least 1, got 0"),
    "plan steps -5": (["plan", "--steps", "-5"], "argument --steps: must be at least 1, got -5"),
    "steps not a number": (["demo", "--steps", "ten"], "argument --steps: must be a whole number, got 'ten'"),
    "missing expected": (["check", "--expected", "missing.csv"], "--expected missing.csv: no such file"),
    "unknown score": (["calibrate", "--output", "out", "--tolerance", "psnr=30"], "unknown score psnr"),
    "budget above 1": (
        ["calibrate", "--output", "out", "--flop-budget", "1.5"],
        "--flop-budget 1.5 is a fraction",
    ),
}


@pytest.mark.parametrize("argv, message", list(CASES.values()), ids=list(CASES))
def test_user_error_is_one_line_before_any_work(argv, message, no_models, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert time.monotonic() - started < 30  # seconds, not the minutes a model build and a run would take


@pytest.mark.parametrize("command", ["demo", "bench", "analyze", "calibrate", "train-demo"])
def test_output_under_a_file_is_refused_before_any_work(command, a_file, no_models, capsys):
    assert main([command, "--output", str(a_file / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{a_file} is a file, not a folder; choose another --output" in err and err.count("\n") == 1
