"""A long calibration survives being stopped: killed with SIGKILL, or stopped by SIGTERM (which exits 143 with
the line that says how to resume), then run again on the same output folder, it makes only the calls its
journal lacks (counted) and writes the report an uninterrupted run writes; a journal of other prompts or
another target is refused in one line. Under torchrun with two processes (gloo) the calls are shared, each
rank making about half of them, and the report is the one a single process writes.

The runs stop at an event, not at a time: a scorer of the test's own (``file.py:function``) writes a file
and waits at its fourth call when asked to through the environment; the test waits for that file."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from torchrun_on_cpu import launch_env, torchrun

from flowblending_accel.cli import main
from flowblending_accel.tiny_models import save_tiny_folders

SCORER = '''
import os, time
from pathlib import Path
import torch

CALLS = [0]

def closeness(outputs, reference):
    """Higher is better: minus the mean squared difference of each sample. Waits at its fourth call when
    HOLD_AT_FOURTH_CALL names a file (written first, so the test knows the run is holding)."""
    CALLS[0] += 1
    hold = os.environ.get("HOLD_AT_FOURTH_CALL")
    if hold and CALLS[0] == 4:
        Path(hold).write_text("holding")
        while True:
            time.sleep(0.05)
    if os.environ.get("FAIL_ON_RANK") == os.environ.get("RANK", "0"):
        raise RuntimeError("the scorer failed on this rank")
    return -((outputs - reference) ** 2).flatten(1).mean(1)
'''


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    """The tiny Wan folders, the command's arguments, and an uninterrupted run's folder."""
    root = tmp_path_factory.mktemp("resume")
    large, small = save_tiny_folders(root, "wan")
    (root / "prompts.txt").write_text("a cat\na dog\na bear\na fox\n")
    (root / "scorer.py").write_text(SCORER)
    argv = ["calibrate", "--large", large, "--small", small, "--prompts", str(root / "prompts.txt")]
    argv += ["--height", "16", "--width", "16", "--frames", "5", "--steps", "6", "--seeds", "1"]
    argv += ["--holdout-seeds", "1", "--sensitivity-window", "0", "--threads", "1"]
    argv += ["--scorers", "psnr", f"{root / 'scorer.py'}:closeness"]
    assert main([*argv, "--output", str(root / "whole")]) == 0
    return argv, root / "whole"


def calls_of(folder: Path) -> list[dict]:
    """The journalled pipeline calls in ``folder`` (every rank's file), a torn last line left out."""
    lines = []
    for path in sorted((folder / "journal").glob("journal.rank-*.jsonl")):
        for text in path.read_text().splitlines():
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                continue
            if line["kind"] == "call" and line["what"]["pass"] != "self-score":
                lines.append(line)
    return lines


def report(folder: Path) -> dict:
    """calibration.json less what differs between any two runs: the command line and the run's cost."""
    document = json.loads((folder / "calibration.json").read_text())
    return {name: value for name, value in document.items() if name not in ("command", "run")}


def held(argv: list[str], output: Path, hold: Path) -> subprocess.Popen:
    """The command as its own process, held at the scorer's fourth call (``hold`` is written then)."""
    env = {**launch_env(), "HOLD_AT_FOURTH_CALL": str(hold), "FLOWBLENDING_STOP_GRACE": "2"}
    command = [sys.executable, "-m", "flowblending_accel.cli", *argv, "--output", str(output)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, process: subprocess.Popen, limit: float = 300.0) -> None:
    start = time.monotonic()
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended before it held: {process.communicate()[1][-3000:]}")
        if time.monotonic() - start > limit:  # slack for a busy machine: the event, not the time, matters
            process.kill()
            pytest.fail("the run never reached the scorer's fourth call")
        time.sleep(0.1)


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_stopped_calibration_resumes_with_only_the_missing_calls_and_the_same_report(
    calibration, tmp_path, stop
):
    argv, whole = calibration
    output = tmp_path / "stopped"
    process = held(argv, output, tmp_path / "holding")
    wait_for(tmp_path / "holding", process)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=120)
    before = calls_of(output)
    assert before and not (output / "calibration.json").exists()
    if stop == signal.SIGTERM:  # the call in flight is abandoned after the grace; the line says how to resume
        assert process.returncode == 143, stderr[-3000:]
        assert "stopped by SIGTERM (the call in flight did not finish within 2 s of SIGTERM)" in stderr
        assert f"calls are journalled in {output / 'journal'}: run the same command again" in stderr
    else:
        assert process.returncode == -signal.SIGKILL
    assert main([*argv, "--output", str(output)]) == 0
    after, expected = calls_of(output), calls_of(whole)
    assert after[: len(before)] == before  # the second run appended to what the first one journalled,
    assert sorted(line["key"] for line in after) == sorted(line["key"] for line in expected)  # each call once
    assert report(output) == report(whole)


def test_a_journal_of_other_prompts_or_another_target_is_refused_in_one_line(calibration, tmp_path, capsys):
    argv, whole = calibration
    prompts = tmp_path / "other.txt"
    prompts.write_text("a cat\na dog\na bear\na horse\n")
    other = [*argv, "--output", str(whole)]
    other[other.index("--prompts") + 1] = str(prompts)
    assert main(other) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "its journal is of another run (target.prompts:" in error
    assert main([*argv, "--steps", "4", "--output", str(whole)]) == 2
    assert "(target.settings.steps: the journal's 6, this run's 4)" in capsys.readouterr().err
    assert main([*argv, "--resume", "--output", str(tmp_path / "new")]) == 2
    assert "holds no journal to resume" in capsys.readouterr().err


@pytest.mark.timeout(600)
def test_two_processes_share_the_calls_and_write_the_single_process_report(calibration, tmp_path):
    argv, whole = calibration
    output = tmp_path / "two"
    launched = subprocess.run(
        [*torchrun(2), "-m", "flowblending_accel.cli", *argv, "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=500,
        env=launch_env(),
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert report(output) == report(whole)  # the same pick and tables, bitwise (one thread per process)
    made = [sum(line["rank"] == rank for line in calls_of(output)) for rank in (0, 1)]
    assert sum(made) == len(calls_of(whole)) and abs(made[0] - made[1]) <= 1
    assert launched.stdout.count("# Calibrated FlowBlending schedule") == 1  # rank 0 alone writes
    assert "2 ranks share them" in launched.stderr
