"""The GPU evidence suite: its CPU dry run takes the exact code path of a GPU run on tiny presets and
writes the same files; a kill or a failing section keeps what the others measured."""

import json

import pytest

from flowblending_accel.bench import suite as suite_module
from flowblending_accel.bench.suite import SECTIONS, SUITES, run_suite, wan_stack
from flowblending_accel.cli import main


@pytest.mark.slow
def test_dry_run_writes_the_gpu_report_layout(tmp_path, capsys):
    assert main(["bench", "--suite", "dry-run", "--output", str(tmp_path / "suite")]) == 0
    folder = tmp_path / "suite"
    assert sorted(p.name for p in folder.iterdir()) == ["suite.json", "suite.md", "suite.png"]
    document = json.loads((folder / "suite.json").read_text())
    sections = document["sections"]
    assert list(sections) == list(SECTIONS) and all(s["status"] == "done" for s in sections.values())
    wan = sections["wan"]["result"]
    runs, _ = wan_stack(SUITES["dry-run"])
    labels = [row["label"] for row in wan["rows"]]
    assert labels == ["baseline (large only)", "+FlowBlending L40-S40-L20", *[f"+{spec}" for spec in runs]]
    assert wan["rows"][1]["calls"] == {"large": 12, "small": 8} and wan["rows"][2]["steps"] == 5
    assert all(row["recompiles_after_warmup"] == 0 for row in wan["rows"])
    assert any("tensorrt" in skipped["row"] for skipped in wan["skipped_rows"])  # no CUDA here: said why
    individual = sections["wan_individual"]["result"]
    assert list(individual["factor_over_flowblending"]) == runs
    assert individual["stacked_over_product"] > 0
    assert sections["router_overhead"]["result"]["pipeline"]["bit_identical"]
    assert sections["memory"]["result"]["offload_counters"]["switches_per_run"] == 2
    report = (folder / "suite.md").read_text()
    assert "Dry run: tiny random models" in report and "stacked ÷ product" in report


def test_the_gpu_suite_is_refused_without_a_gpu_and_takes_no_target(tmp_path, capsys):
    import torch

    if not torch.cuda.is_available():
        assert main(["bench", "--suite", "gpu", "--output", str(tmp_path)]) == 2
        assert "sees no CUDA GPU" in capsys.readouterr().err
    assert main(["bench", "--suite", "dry-run", "--stack", "fbc", "--output", str(tmp_path)]) == 2
    assert "--suite sets its own targets and sizes; drop --stack" in capsys.readouterr().err


def test_a_failing_or_interrupted_section_keeps_the_others(monkeypatch):
    written = []

    def broken(size, deadline, sections):
        raise RuntimeError("out of memory")

    def interrupted(size, deadline, sections):
        raise KeyboardInterrupt

    runners = {name: (lambda size, deadline, sections: {"ok": True}) for name in SECTIONS}
    runners.update(wan=broken, ltx=interrupted)
    monkeypatch.setattr(suite_module, "RUNNERS", runners)
    sections = run_suite(
        SUITES["dry-run"], lambda done: written.append({n: s.status for n, s in done.items()})
    )
    statuses = {name: section.status for name, section in sections.items()}
    assert statuses == {
        "environment": "done",
        "router_overhead": "done",
        "wan": "failed",
        "wan_individual": "done",
        "ltx": "interrupted",
        "memory": "not run",
    }
    assert sections["wan"].reason == "RuntimeError: out of memory"
    assert written[-1] == statuses  # written after the interruption too
