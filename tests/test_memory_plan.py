"""Real checkpoints on real GPUs, rehearsed on tiny saved folders: a memory plan read from the safetensors
headers (no weight read) that refuses a mode that does not fit before loading, offload modes that never
move the whole pipeline to the accelerator, and the recipes' --offload."""

import json

import pytest
import torch
from optional import needs_group_offload_here

from flowblending_accel.accelerators import OFFLOAD_MODES, enable_offload
from flowblending_accel.cli import main
from flowblending_accel.targets import folders
from flowblending_accel.targets.memory import pipeline_weights
from flowblending_accel.tiny_models import (
    save_tiny_folders,
    tiny_wan_pair,
    tiny_wan_pipeline,
    wan_call_kwargs,
)

WAN_SIZE = ["--height", "16", "--width", "16", "--frames", "5"]


@pytest.fixture(scope="module")
def wan_folders(tmp_path_factory):
    return save_tiny_folders(tmp_path_factory.mktemp("plan"), "wan")


def _state_bytes(module: torch.nn.Module) -> int:
    """The bytes a module's state dict holds, each storage once (tied weights too)."""
    seen = {(t.untyped_storage().data_ptr(), tuple(t.shape)): t for t in module.state_dict().values()}
    return sum(t.numel() * t.element_size() for t in seen.values())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_weights_read_from_the_headers_are_the_bytes_loaded(wan_folders, dtype):
    from diffusers import DiffusionPipeline
    from diffusers.models import AutoModel

    large, small = wan_folders
    weights = pipeline_weights(large, small, "transformer", dtype)
    pipe = DiffusionPipeline.from_pretrained(large, dtype=getattr(torch, dtype))
    loaded = {name: _state_bytes(m) for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    loaded["small"] = _state_bytes(
        AutoModel.from_pretrained(small, subfolder="transformer", dtype=getattr(torch, dtype))
    )
    assert {name: w.total for name, w in weights.items()} == loaded


def test_plan_memory_prints_every_mode_and_which_fit(wan_folders, capsys):
    large, small = wan_folders
    argv = ["plan", "--memory", "--large", large, "--small", small, "--dtype", "float32", *WAN_SIZE]
    assert main([*argv, "--gpu-memory", "1MiB"]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| ") and "--offload" not in line]
    assert [row.split("|")[1].strip() for row in rows] == list(OFFLOAD_MODES)
    assert all(row.rstrip(" |").endswith(("yes", "no")) for row in rows)
    assert "safetensors headers" in printed and "VAE's decoding is not included" in printed


def test_a_mode_that_does_not_fit_is_refused_before_any_weight_is_read(wan_folders, monkeypatch, capsys):
    large, small = wan_folders

    def loaded(*args, **kwargs):
        raise AssertionError("weights were read before the plan was refused")

    monkeypatch.setattr(folders, "folder_target", loaded)
    prompts = folders.Path(large).parent / "prompts.txt"
    prompts.write_text("a cat\n")
    argv = ["bench", "--large", large, "--small", small, "--prompts", str(prompts), *WAN_SIZE]
    assert main([*argv, "--gpu-memory", "1KiB", "--output", str(prompts.parent / "out")]) == 2
    error = capsys.readouterr().err
    assert "--offload none needs an estimated" in error and "no offload mode fits" in error
    assert "plan --memory" in error and "Traceback" not in error


def _routed(mode: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """A tiny Wan pipeline loaded 'on the CPU' and put in ``mode`` (onto the CPU: this machine has no GPU),
    unwrapped under L100 and routed under L40-S40-L20."""
    from flowblending_accel import FlowBlendingConfig, flowblending

    large, small = tiny_wan_pair()
    pipe = tiny_wan_pipeline(large)
    members = enable_offload(pipe, "cpu", mode)
    reference = pipe(**wan_call_kwargs(steps=6)).frames
    with flowblending(pipe, small, "L100"):
        routed = pipe(**wan_call_kwargs(steps=6)).frames
    from flowblending_accel.accelerators import flowblending

    with flowblending(pipe, small, FlowBlendingConfig("L40-S40-L20", accelerators=members)) as router:
        pipe(**wan_call_kwargs(steps=6))
        steps = router.last_run.steps_per_model
    return reference, routed, {"members": members, "steps": steps}


@pytest.mark.parametrize("mode", ["model", pytest.param("group", marks=needs_group_offload_here)])
def test_each_offload_mode_routes_and_all_large_is_bit_identical(mode):
    """(Sequential offload onto a CPU fails inside accelerate itself, unwrapped too: it is checked below.)"""
    reference, routed, found = _routed(mode)
    assert torch.equal(routed, reference)
    assert found["steps"] == {"large": 3, "small": 3}
    assert found["members"] == (["offload:1"] if mode == "group" else [])


def test_sequential_offload_asks_the_pipeline_for_it_on_the_device(monkeypatch):
    large, _ = tiny_wan_pair()
    pipe = tiny_wan_pipeline(large)
    asked = []
    monkeypatch.setattr(
        type(pipe), "enable_sequential_cpu_offload", lambda self, device: asked.append(device)
    )
    monkeypatch.setattr(type(pipe), "to", lambda self, *a, **k: pytest.fail("the whole pipeline was moved"))
    assert enable_offload(pipe, "cuda", "sequential") == [] and asked == ["cuda"]


def test_an_unknown_offload_mode_is_refused(capsys):
    assert main(["bench", "--offload", "disk", "--output", "x"]) == 2
    assert "invalid choice: 'disk'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--offload 'disk': choose one of none, model, group, sequential"):
        enable_offload(None, "cpu", "disk")


def test_offload_on_a_cpu_says_it_does_nothing_there(wan_folders, tmp_path, capsys):
    large, small = wan_folders
    (tmp_path / "prompts.txt").write_text("a cat\n")
    argv = [
        "bench",
        "--large",
        large,
        "--small",
        small,
        "--prompts",
        str(tmp_path / "prompts.txt"),
        *WAN_SIZE,
    ]
    argv += [
        "--steps",
        "4",
        "--stack",
        "--repeats",
        "1",
        "--offload",
        "model",
        "--output",
        str(tmp_path / "b"),
    ]
    assert main(argv) == 0
    assert "note: --offload model does nothing on --device cpu" in capsys.readouterr().err
    assert json.loads((tmp_path / "b" / "bench.json").read_text())["rows"]


def test_the_documented_memory_table_is_the_committed_plan():
    """The estimated table of docs/memory-and-offload.md is what benchmarks/memory_plan.py wrote (rerun it
    after a change)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    plans = json.loads((root / "benchmarks" / "results" / "memory-plan" / "memory-plan.json").read_text())
    wan = next(plan for plan in plans if plan["pair"].startswith("Wan 2.1"))
    page = (root / "docs" / "memory-and-offload.md").read_text()
    for mode, peak in wan["peaks"].items():
        assert f"| `--offload {mode}` | {peak['total'] / 2**30:.1f} GiB |" in page, mode
