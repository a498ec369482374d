"""The GPU evidence suite, rehearsed on the CPU: the same parts, sections and rows on tiny presets, run as
the device runs them (a part runner, one process per section). A part stopped by SIGKILL or SIGTERM keeps
every finished row; a hang, a crash and an out-of-memory error are recorded; a section that timed nothing
ends cut short, never done; a resumed part skips what was measured; any mix of part files renders.

None of them depends on how busy the machine is: the rehearsal's boxes leave room for a machine several
times slower than an idle one, the injected faults fire as a section reaches their row (before any time
check could skip it), and the tests wait for events, not for a time.
"""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from flowblending_accel.bench.suite import PART_SECONDS, SUITES
from flowblending_accel.bench.suite.costs import PROFILES, part_seconds, section_seconds
from flowblending_accel.bench.suite.journal import read_lines
from flowblending_accel.bench.suite.parts import PartRunner
from flowblending_accel.cli import main

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "flowblending_accel.cli", "bench"]


def _part(folder: Path, *parts: str, extra=(), env=None, **popen) -> subprocess.Popen:
    command = [*CLI, "--suite", "rehearsal", "--part", *parts, "--output", str(folder), *extra]
    return subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        **popen,
    )


def _finish(process: subprocess.Popen, seconds: float = 600) -> tuple[int, str]:  # beyond a part's budget
    output, _ = process.communicate(timeout=seconds)
    return process.returncode, output


def _lines(folder: Path, kind: str | None = None) -> list[dict]:
    return [line for line in read_lines([folder]) if kind is None or line["kind"] == kind]


def _wait_for(folder: Path, kind: str, count: int, seconds: float = 300) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if folder.is_dir() and len(_lines(folder, kind)) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} {kind} lines after {seconds} s")


def _wait_for_output(log: Path, text: str, seconds: float = 300) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if log.is_file() and text in log.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} in {log.name} after {seconds} s")


def _rows_with(folder: Path, *kinds: str) -> set[str]:
    return {line["row"] for line in _lines(folder) if line["kind"] in kinds}


def _render(*folders: Path, output: Path) -> dict:
    assert main(["bench", "--suite", "render", *map(str, folders), "--output", str(output)]) == 0
    return json.loads((output / "suite.json").read_text())


@pytest.fixture(scope="module")
def wan_part(tmp_path_factory):
    """One complete rehearsal of the ``wan`` part."""
    folder = tmp_path_factory.mktemp("wan-part")
    code, output = _finish(_part(folder, "wan"))
    assert code == 0, output
    return folder


CRASHED_ROW, OOM_ROW = "+FlowBlending L40-S40-L20", "+FlowBlending, offload with prefetch"


@pytest.fixture(scope="module")
def faulted_ltx_part(tmp_path_factory):
    """The ``ltx`` part with its first section killed mid-way and an out-of-memory error in its second."""
    folder = tmp_path_factory.mktemp("ltx-part")
    faults = {"FLOWBLENDING_SUITE_FAULT": f"crash:ltx/{CRASHED_ROW};oom:memory/{OOM_ROW}"}
    code, output = _finish(_part(folder, "ltx", env=faults))
    assert code == 1, output
    return folder


def test_every_gpu_part_prints_an_estimate_that_fits_its_budget(capsys):
    suite, profile = SUITES["gpu"], PROFILES["gpu"]
    totals = {part.name: part_seconds(suite, part.name, profile)["total"] for part in suite.parts}
    assert list(totals) == ["smoke", "wan", "compile", "individual", "ltx"]  # in order of what matters most
    assert all(total <= PART_SECONDS for total in totals.values()), totals
    assert totals["smoke"] <= 90
    assert sum(totals.values()) <= 12 * 60, totals
    for part in suite.parts:
        for section in part.sections:  # each section's estimate fits its own box
            assert section_seconds(section, suite.dtype, profile)["total"] <= section.box, section.name
    assert main(["bench", "--suite", "estimate", "gpu"]) == 0
    printed = capsys.readouterr().out
    assert "part wan (" in printed and "400 TFLOP/s" in printed
    assert f"estimated {sum(totals.values()):.0f} s" in printed


def test_a_part_prints_its_estimate_first_and_every_row_as_a_line(wan_part):
    log = (wan_part / "wan.log").read_text()
    assert log.startswith("[wan] building")  # the estimate went to the terminal before the section began
    lines = _lines(wan_part)
    assert [line["kind"] for line in lines][:2] == ["part", "section"]
    assert lines[0]["estimate_seconds"]["total"] > 0 and lines[0]["estimate"][0].startswith("part wan")
    samples = _lines(wan_part, "sample")
    labels = [row.label for row in SUITES["rehearsal"].section("wan").measured_rows]
    assert sorted({s["row"] for s in samples}) == sorted(labels)
    assert len(samples) == len(labels) * SUITES["rehearsal"].section("wan").repeats
    sample = samples[0]
    for field in ("seconds", "calls", "flops", "peak_host_bytes", "counters", "recompiles", "fingerprint"):
        assert field in sample
    assert sample["setup"]["versions"]["diffusers"] and sample["setup"]["device"].startswith("CPU")
    blended = next(s for s in samples if s["row"] == "+FlowBlending L40-S40-L20")
    assert blended["calls"] == {"large": 12, "small": 8}
    flops = _lines(wan_part, "flops")[0]
    assert blended["flops"]["large"] == 12 * flops["large"]["per_call"]  # one counted call x calls
    assert _lines(wan_part, "part_end")[0]["status"] == "done"


def test_a_sigkill_mid_section_keeps_every_finished_row_and_it_renders_beside_other_parts(
    tmp_path, faulted_ltx_part
):
    killed = tmp_path / "killed"
    process = _part(killed, "wan", start_new_session=True)
    _wait_for(killed, "sample", 3)
    os.killpg(process.pid, signal.SIGKILL)  # the part runner and its section, like a machine taken back
    process.wait(timeout=30)
    kept = _lines(killed, "sample")
    assert len(kept) >= 3 and all(line["seconds"] > 0 for line in kept)
    summary = _render(killed, faulted_ltx_part, output=tmp_path / "report")
    device = summary["devices"][0]
    assert device["parts"]["wan"]["status"] == "started, no end recorded"
    assert device["parts"]["ltx"]["status"] == "partial" and device["parts"]["compile"]["status"] == "not run"
    assert device["sections"]["wan"]["status"].startswith("cut short")
    measured = {row["label"]: row for row in device["sections"]["wan"]["rows"]}
    assert "baseline (large only)" in measured  # the first row of every round: a cut-short one pairs
    assert sum(row["samples"] for row in measured.values()) >= len(kept) - 1  # all but the probe's
    assert measured["+FlowBlending L40-S40-L20"]["speedup"] is not None
    short = [row for row in measured.values() if row["samples"] < row["repeats"]]
    assert all("stopped from outside" in row["short_of_rounds"] for row in short)  # no line said why
    report = (tmp_path / "report" / "suite.md").read_text()
    assert "not measured — not run" in report and "killed by SIGKILL" in report
    assert (tmp_path / "report" / "suite.png").exists()


def test_sigterm_stops_the_part_at_once_and_says_so(tmp_path):
    # The section hangs as it reaches its fourth row, before any time check: however busy the machine, the
    # signal finds it in the middle of its work.
    process = _part(tmp_path, "wan", env={"FLOWBLENDING_SUITE_FAULT": "hang:wan/+fbc:0.05"})
    _wait_for_output(tmp_path / "wan.log", "injected hang, row '+fbc:0.05'")
    start = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code, output = _finish(process, 60)
    assert code == 143 and time.monotonic() - start < 30, output  # not the section's box (minutes)
    lines = _lines(tmp_path)
    interrupted = [i for i, line in enumerate(lines) if line["kind"] == "interrupted"]
    assert interrupted and lines[interrupted[0]]["row"] == "+fbc:0.05"
    assert lines[-1]["kind"] == "part_end" and lines[-1]["status"] == "interrupted"
    after = [line["kind"] for line in lines[interrupted[0] :]]
    assert "sample" not in after and "flops" not in after  # nothing measured or counted after the signal
    # each row before it warmed up, or skipped saying why: none is lost without a word
    assert _rows_with(tmp_path, "warmup", "skipped") == {
        "baseline (large only)",
        "+FlowBlending L40-S40-L20",
        "+dpm++:5",
    }


HANG_BOX = 45.0  # holds the section's start-up and build on a busy machine: the hang fires right after


def test_a_hang_is_stopped_by_its_box_and_recorded_with_its_row(tmp_path, monkeypatch):
    # The hang fires as the section reaches the row, before any time check, so a busy machine that leaves
    # the rows no time cannot skip it; the box counts from the section's start (a part runner in this
    # process), not from the start of a CLI that a busy machine slows too.
    monkeypatch.setenv("FLOWBLENDING_SUITE_FAULT", "hang:wan/+dpm++:5")
    suite = SUITES["rehearsal"]
    part = replace(suite.part("wan"), sections=(replace(suite.section("wan"), box=HANG_BOX),))
    start = time.monotonic()
    assert PartRunner(suite, part, tmp_path, []).run() == 1
    assert time.monotonic() - start >= HANG_BOX  # held to its box, then stopped
    failed = _lines(tmp_path, "failed")
    assert len(failed) == 1 and failed[0]["row"] == "+dpm++:5"
    assert failed[0]["reason"].startswith(f"did not finish within its time box ({HANG_BOX:.0f} s)")
    assert "+dpm++:5" in failed[0]["last_output"][-1]
    # the rows before the hang are kept (warmed up, or skipped saying why); nothing after it ran
    assert _rows_with(tmp_path, "warmup", "skipped") == {"baseline (large only)", "+FlowBlending L40-S40-L20"}
    summary = _render(tmp_path, output=tmp_path / "report")
    assert summary["devices"][0]["sections"]["wan"]["status"].startswith("failed: did not finish")


def test_a_section_whose_box_is_spent_before_a_timed_run_ends_cut_short_not_done(tmp_path):
    # late:wan starts the section with its box spent, as a start-up and a build that take all of it do.
    code, output = _finish(_part(tmp_path, "wan", env={"FLOWBLENDING_SUITE_FAULT": "late:wan"}))
    assert code == 1, output
    assert not _lines(tmp_path, "warmup") and not _lines(tmp_path, "sample")
    labels = [row.label for row in SUITES["rehearsal"].section("wan").measured_rows]
    skipped = {line["row"]: line["reason"] for line in _lines(tmp_path, "skipped")}
    assert sorted(skipped) == sorted(labels)  # every row has its line, with the reason
    assert labels[0] == "baseline (large only)" and skipped[labels[0]].startswith("time box: 0 s of")
    assert all(
        skipped[label].startswith("the baseline (large only) was not measured") for label in labels[1:]
    )
    ends = _lines(tmp_path, "section_end")
    assert [end["status"] for end in ends] == ["cut short"]
    assert ends[0]["reason"].startswith("no row was timed in this run (first not measured: baseline")
    assert _lines(tmp_path, "part_end")[0]["status"] == "cut short"
    assert "section wan: cut short: no row was timed" in output
    device = _render(tmp_path, output=tmp_path / "report")["devices"][0]
    assert device["parts"]["wan"]["status"] == "cut short"
    assert device["sections"]["wan"]["status"].startswith("cut short: no row was timed in this run")
    report = (tmp_path / "report" / "suite.md").read_text()
    assert "| wan | cut short |" in report and "Status: cut short: no row was timed" in report


def test_a_pairs_section_with_no_time_for_a_pair_exits_non_zero_and_renders_cut_short(tmp_path):
    # The section process itself, with its deadline already passed.
    journal = tmp_path / "smoke.jsonl"
    worker = [sys.executable, "-m", "flowblending_accel.bench.suite.worker", "--suite", "rehearsal"]
    where = ["--part", "smoke", "--section", "smoke", "--journal", str(journal), "--run", "r1"]
    done = subprocess.run(
        [*worker, *where, "--deadline", str(time.time())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "building" not in done.stdout  # no model built for pairs that cannot start
    lines = list(read_lines([journal]))
    assert [line["kind"] for line in lines] == ["skipped", "section_end"]
    assert lines[0]["pairs"] == 0 and lines[0]["planned"] == SUITES["rehearsal"].section("smoke").repeats
    assert lines[1]["status"] == "cut short"
    assert lines[1]["reason"].startswith("no pair was timed in this run")
    section = _render(tmp_path, output=tmp_path / "report")["devices"][0]["sections"]["smoke"]
    assert section["status"].startswith("cut short: no pair was timed") and section["pairs"] is None
    assert "0 of 3 planned pairs: skipped: time box" in (tmp_path / "report" / "suite.md").read_text()


def test_a_crash_and_an_out_of_memory_error_are_recorded_and_the_part_goes_on(faulted_ltx_part):
    failed = _lines(faulted_ltx_part, "failed")
    assert [(line["section"], line["row"]) for line in failed] == [("ltx", CRASHED_ROW), ("memory", OOM_ROW)]
    assert failed[0]["reason"].startswith("killed by SIGKILL")  # recorded by the part runner
    assert "CUDA out of memory" in failed[1]["reason"]  # recorded by the section, which went on
    rows = {line["row"] for line in _lines(faulted_ltx_part, "sample") if line["section"] == "memory"}
    assert rows == {
        "baseline (large only)",
        "+FlowBlending L40-S40-L20",
        "+FlowBlending, offload without prefetch",
    }
    assert _lines(faulted_ltx_part, "section_end")[0]["section"] == "memory"


def test_a_resumed_part_skips_the_rows_already_measured(wan_part, tmp_path):
    # Without the +fbc row's samples, only it is measured again, beside a baseline of its own run.
    partial = tmp_path / "partial"
    partial.mkdir()
    kept = [line for line in (wan_part / "wan.jsonl").read_text().splitlines() if '"+fbc:0.05"' not in line]
    (partial / "wan.jsonl").write_text("\n".join(kept) + "\n")
    code, output = _finish(_part(tmp_path / "rest", "wan", extra=["--resume", str(partial)]))
    assert code == 0, output
    section = _lines(tmp_path / "rest", "section")[0]
    rows = SUITES["rehearsal"].section("wan").measured_rows
    assert "+fbc:0.05" not in section["measured_earlier"]
    assert len(section["measured_earlier"]) == len(rows) - 1
    measured_again = {line["row"] for line in _lines(tmp_path / "rest", "sample")}
    assert measured_again == {"baseline (large only)", "+fbc:0.05"}
    summary = _render(partial, tmp_path / "rest", output=tmp_path / "report")
    rows = {row["label"]: row for row in summary["devices"][0]["sections"]["wan"]["rows"]}
    assert len(rows["+fbc:0.05"]["runs"]) == 1 and rows["+fbc:0.05"]["speedup"] is not None
    assert len(rows["baseline (large only)"]["runs"]) == 2


def test_a_row_whose_memory_estimate_does_not_fit_is_refused_before_any_model_is_built(tmp_path):
    code, output = _finish(_part(tmp_path, "wan", extra=["--gpu-memory", "1KiB"]))
    assert code == 1 and "building" not in output, output  # the line printed before a model is built
    skipped = _lines(tmp_path, "skipped")
    assert skipped and "above 90 % of the GPU's" in skipped[0]["reason"]
    assert _lines(tmp_path, "section_end")[0]["status"] == "skipped"
    assert not _lines(tmp_path, "warmup") and not _lines(tmp_path, "sample")


def test_the_gpu_suite_is_refused_without_a_gpu_and_takes_no_target(tmp_path, capsys):
    import torch

    if not torch.cuda.is_available():
        assert main(["bench", "--suite", "gpu", "--part", "smoke", "--output", str(tmp_path)]) == 2
        assert "sees no CUDA GPU" in capsys.readouterr().err
    assert main(["bench", "--suite", "rehearsal", "--stack", "fbc", "--output", str(tmp_path)]) == 2
    assert "--suite sets its own targets and sizes; drop --stack" in capsys.readouterr().err
    assert main(["bench", "--suite", "rehearsal", "--part", "nope", "--output", str(tmp_path)]) == 2
    assert "has no part 'nope'" in capsys.readouterr().err
    assert main(["bench", "--suite", "render", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def _this_python_first() -> str:
    """run.sh calls ``python``: the one running the tests, even when its venv is not activated."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


@pytest.mark.slow
@pytest.mark.timeout(1800)  # three parts, each held to its budget on a busy machine
def test_the_other_parts_rehearsed_through_the_device_script(wan_part, tmp_path):
    """What the device runs, part by part, with run.sh (the wan and ltx parts ran above); then the report of
    all of them, with every headline."""
    for part in ("smoke", "compile", "individual"):
        done = subprocess.run(
            ["bash", "benchmarks/gpu/run.sh", part],
            cwd=ROOT,
            env={**os.environ, "SUITE": "rehearsal", "OUT": str(tmp_path), "PATH": _this_python_first()},
            capture_output=True,
            text=True,
            timeout=600,  # beyond run.sh's own limit
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        lines = done.stdout.splitlines()
        estimate = next(i for i, line in enumerate(lines) if line.startswith(f"part {part} ("))
        assert estimate < next(i for i, line in enumerate(lines) if line.startswith("["))  # estimate first
    summary = _render(tmp_path, wan_part, output=tmp_path / "report")
    device = summary["devices"][0]
    assert {name for name, part in device["parts"].items() if part["status"] == "done"} == {
        "smoke",
        "wan",
        "compile",
        "individual",
    }
    headlines = device["headlines"]
    assert headlines["flowblending"]["efficiency"] > 0
    assert headlines["cumulative_stack"]["stack"][-1] == "compile"
    assert headlines["stacked_over_product"]["complete"]
    assert headlines["recompiles_after_warmup"] == 0
    sections = device["sections"]
    assert sections["smoke"]["pairs"]["bit_identical"] and "isolated" in sections["overhead"]
    assert any("tensorrt" in m["label"] for m in sections["compile"]["not_measured"])  # said why
