"""Each integration recipe, run on tiny local diffusers folders (no hub)."""

import importlib.util
from pathlib import Path

import pytest
import torch
from optional import needs_deepcache

from flowblending_accel import flowblending_stats
from flowblending_accel.testing import (
    ltx_call_kwargs,
    sd_call_kwargs,
    tiny_ltx_pair,
    tiny_ltx_pipeline,
    tiny_sd_pipeline,
    tiny_unet_pair,
    tiny_wan_pair,
    tiny_wan_pipeline,
    wan_call_kwargs,
)

RECIPES = Path(__file__).resolve().parent.parent / "integrations" / "recipes"


def recipe(name):
    spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save(tmp_path, pipe, small, denoiser="transformer"):
    pipe.save_pretrained(tmp_path / "pipeline")
    small.save_pretrained(tmp_path / "small" / denoiser)
    return str(tmp_path / "pipeline"), str(tmp_path / "small")


CPU = dict(
    device="cpu", dtype=torch.float32, tokenizer=None, text_encoder=None
)  # tiny folders: embeddings in
LSL_10 = {"large": 6, "small": 4}


def test_wan21_recipe(tmp_path):
    large, small = tiny_wan_pair()
    pipeline, small_path = _save(tmp_path, tiny_wan_pipeline(large), small)
    pipe, router = recipe("wan21_14b_1p3b").build(pipeline, small_path, stack=["dpm++:10"], **CPU)
    pipe(**{**wan_call_kwargs(steps=10)})
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert router.last_run.steps_per_model == LSL_10


def test_wan21_recipe_guidance_free_small_stage(tmp_path):
    large, small = tiny_wan_pair()
    pipeline, small_path = _save(tmp_path, tiny_wan_pipeline(large), small)
    pipe, router = recipe("wan21_14b_1p3b").build(pipeline, small_path, small_guidance="off", **CPU)
    pipe(**wan_call_kwargs(steps=10))
    assert router.last_run.calls_per_model == {"large": 12, "small": 4}  # one call per small step


def test_wan22_recipe_routes_both_experts(tmp_path):
    high, small = tiny_wan_pair()
    low, _ = tiny_wan_pair(seed=5)
    pipeline, small_path = _save(
        tmp_path, tiny_wan_pipeline(high, transformer_2=low, boundary_ratio=0.7), small
    )
    pipe, _ = recipe("wan22_a14b_small").build(pipeline, small_path, **CPU)
    pipe(**wan_call_kwargs(steps=10))
    assert flowblending_stats(pipe).steps_per_model == LSL_10


def test_ltx_recipe(tmp_path):
    large, small = tiny_ltx_pair()
    pipeline, small_path = _save(tmp_path, tiny_ltx_pipeline(large), small)
    pipe, router = recipe("ltx_13b_2b").build(pipeline, small_path, **CPU)
    pipe(**ltx_call_kwargs(steps=10))
    assert router.last_run.calls_per_model == LSL_10


@needs_deepcache
def test_sd_deepcache_recipe(tmp_path):
    large, small = tiny_unet_pair()
    pipeline, small_path = _save(tmp_path, tiny_sd_pipeline(large), small, denoiser="unet")
    pipe, router = recipe("sd15_bksdm_deepcache").build(
        pipeline, small_path, cache_interval=2, feature_extractor=None, **CPU
    )
    first = pipe(**sd_call_kwargs(steps=10)).images
    second = pipe(**sd_call_kwargs(steps=10)).images
    assert torch.equal(first, second) and router.last_run.calls_per_model == LSL_10


@pytest.mark.parametrize("name", ["wan21_14b_1p3b", "wan22_a14b_small", "ltx_13b_2b", "sd15_bksdm_deepcache"])
def test_recipes_have_a_cli(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        recipe(name).main(["--help"])
    assert exit_info.value.code == 0 and "--schedule" in capsys.readouterr().out
