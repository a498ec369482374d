"""The shipped pair: loads from the package, documented shapes, deterministic per seed, and the demo command
writes its report and grid without ever overwriting an earlier one."""

import json

import pytest
import torch

from flowblending_accel.demo.models import CALL_DEFAULTS, default_pair_path, load_demo_pipeline


@pytest.fixture(scope="module")
def shipped():
    return load_demo_pipeline()


def test_shipped_pair_is_in_the_package_and_small_enough():
    folder = default_pair_path()
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert (folder / "model_index.json").exists() and (folder / "README.md").exists()
    assert size <= 25 * 1024 * 1024


def test_shipped_pair_shapes_and_capacity_gap(shipped):
    from flowblending_accel.metrics.flops import call_flops

    pipe, small = shipped
    large = pipe.transformer
    assert large.config.in_channels == small.config.in_channels == 32
    kwargs = dict(
        hidden_states=torch.randn(1, 32, 5, 8, 8),
        timestep=torch.tensor([500.0]),
        encoder_hidden_states=torch.randn(1, 8, 64),
        return_dict=False,
    )
    assert large(**kwargs)[0].shape == (1, 32, 5, 8, 8)
    assert call_flops(large, kwargs=kwargs) >= 8 * call_flops(small, kwargs=kwargs)


def test_shipped_pipeline_is_deterministic_per_seed(shipped):
    pipe, _ = shipped

    def generate(seed):
        return pipe(
            "a 4 moving right",
            num_inference_steps=4,
            guidance_scale=3.0,
            output_type="np",
            generator=torch.Generator().manual_seed(seed),
            **CALL_DEFAULTS,
        ).frames

    first, again, other = generate(0), generate(0), generate(1)
    assert first.shape == (1, 9, 32, 32, 1) and first.min() >= 0 and first.max() <= 1
    assert (first == again).all() and not (first == other).all()


def test_demo_command_writes_report_and_never_overwrites(tmp_path, capsys):
    from flowblending_accel.cli import main

    args = [
        "demo",
        "--output",
        str(tmp_path / "demo"),
        "--prompts",
        "a 3 moving right",
        "a 7 moving left",
        "--steps",
        "4",
        "--chunk-size",
        "1",
        "--threads",
        "1",
        "--timing-seconds",
        "0",
    ]
    assert main(args) == 0
    assert main(args) == 0
    for folder in (tmp_path / "demo", tmp_path / "demo-2"):
        assert {p.name for p in folder.iterdir()} >= {"report.md", "results.json", "grid.gif", "grid.png"}
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert set(results["rows"]) == {"real", "LLL", "LSL", "LSS", "SLL", "SSS"}
    assert results["rows"]["LSL"]["calls_per_sample"]["small"] > 0
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "| LSL | L40-S40-L20 |" in report and "FD to real (± sd, n = 2)" in report
    speed = results["rows"]["LSL"]["speedup_vs_lll"]
    assert speed["rounds"] == 5 and speed["low"] <= speed["median"] <= speed["high"]  # the minimum rounds
    assert results["rows"]["LSL"]["fd_to_real"]["samples"] == 2
    assert results["context"]["timing"]["rounds"] == 5
    assert main(["demo", "--prompts", "a cat moving left", "--output", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
