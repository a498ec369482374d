"""The declared diffusers range and what an older minor lacks: every feature that needs a newer diffusers
refuses in one line naming the release, before any model work. These run on any installed diffusers: the
version the versions module sees is faked where a refusal is the point."""

import re
import sys
from pathlib import Path

import pytest
import torch
from diffusers import ContextParallelConfig

from flowblending_accel.accelerators import (
    FlowBlendingConfig,
    MagCache,
    apply_flowblending_,
    calibrate_mag_ratios,
    enable_offload,
    flowblending,
    parse_accelerator,
    validate_configs,
)
from flowblending_accel.accelerators.context_parallel import ContextParallel
from flowblending_accel.core import diffusers_internals, diffusers_versions
from flowblending_accel.core.compat import check_context_parallel
from flowblending_accel.core.families import family_for
from flowblending_accel.tiny_models import tiny_wan_pair, tiny_wan_pipeline, wan_call_kwargs

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def installed(monkeypatch):
    """Make the versions module see another diffusers release."""

    def pretend(version: str) -> None:
        monkeypatch.setattr(diffusers_versions, "installed", lambda: version)

    return pretend


@pytest.fixture
def forwards(wan_pipe, wan_pair):
    """How many times either model of the tiny Wan pair ran."""
    counted = []
    for model in wan_pair:
        model.register_forward_pre_hook(lambda *_: counted.append(1))
    return counted


def _one_line(error: pytest.ExceptionInfo, feature: str, version: str) -> str:
    message = str(error.value)
    needed = diffusers_versions.FEATURES[feature]
    assert "\n" not in message
    assert f"needs diffusers >= {needed.since} (" in message
    assert f"the installed diffusers is {version}: upgrade diffusers, or " in message
    return message


def test_versions_compare_by_release():
    assert diffusers_versions.release("0.41.0.dev0") == (0, 41, 0)
    assert diffusers_versions.release("0.36") == (0, 36, 0)
    assert diffusers_versions.release("0.42.1") > diffusers_versions.release("0.42")
    with pytest.raises(ValueError, match="not a diffusers version"):
        diffusers_versions.release("main")


def test_has_follows_the_installed_release(installed):
    installed("0.40.0")
    assert diffusers_versions.has("context_parallel") and not diffusers_versions.has("seacache")
    installed("0.41.0.dev0")
    assert diffusers_versions.has("seacache")


def test_pyproject_declares_the_tested_floor_and_no_upper_bound():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (diffusers,) = [d for d in project["dependencies"] if d.startswith("diffusers")]
    assert diffusers == f"diffusers>={diffusers_versions.OLDEST}"
    assert "diffusers>=0.37" in project["optional-dependencies"]["quantize"]  # 0.36.0 + torchao breaks


def test_the_docs_table_lists_every_feature_with_its_release():
    page = (ROOT / "docs" / "api.md").read_text()
    for feature in diffusers_versions.FEATURES.values():
        assert f"| {feature.shown} | {feature.since} |" in page, feature.shown


@pytest.mark.parametrize("spec", ["seacache", "magcache:calibrate"])
def test_a_cache_the_installed_diffusers_lacks_is_refused_before_any_work(
    spec, installed, wan_pipe, wan_pair, forwards
):
    installed("0.36.0")
    with pytest.raises(ValueError) as error:
        apply_flowblending_(wan_pipe, wan_pair[1], FlowBlendingConfig("L100", accelerators=[spec]))
    message = _one_line(error, spec.split(":")[0], "0.36.0")
    assert message.startswith(f"{spec} needs diffusers >= ") and f"drop {spec.split(':')[0]}" in message
    assert forwards == [] and not diffusers_internals.registries(wan_pipe.transformer)
    with pytest.raises(ValueError, match=f"^{spec} needs diffusers"):  # the tools' check, before loading
        validate_configs([parse_accelerator(spec)], "cpu")


def test_magcache_calibration_is_refused_before_any_work(installed, wan_pipe, wan_pair, forwards):
    installed("0.36.0")
    with pytest.raises(ValueError, match=r"^magcache:calibrate needs diffusers >= 0\.37 "):
        calibrate_mag_ratios(wan_pipe, wan_pair[1], wan_call_kwargs(steps=4))
    with pytest.raises(ValueError, match=r"^magcache needs diffusers >= 0\.37 "):
        apply_flowblending_(
            wan_pipe,
            wan_pair[1],
            FlowBlendingConfig("L100", accelerators=[MagCache(mag_ratios={"large": [1.0]})]),
        )
    assert forwards == []


def test_context_parallelism_is_refused_below_its_release_on_every_path(installed, wan_pair):
    installed("0.38.0")
    with pytest.raises(ValueError) as error:
        parse_accelerator("cp:2").check_environment("cpu")  # before the one-process refusal
    assert _one_line(error, "context_parallel", "0.38.0").startswith("cp:2 needs diffusers >= 0.39 (")
    config = ContextParallelConfig(ulysses_degree=2)
    with pytest.raises(
        ValueError, match=r"^ContextParallel\.from_diffusers\(\.\.\.\) needs diffusers >= 0\.39"
    ):
        ContextParallel.from_diffusers(config)
    large, small = wan_pair
    family = family_for(tiny_wan_pipeline(large))
    with pytest.raises(ValueError) as error:  # the large model split by the user: the small one cannot follow
        check_context_parallel(large, small, family, "pipe.transformer", config)
    assert _one_line(error, "context_parallel", "0.38.0").startswith(
        "pipe.transformer runs context-parallel; the small model following it needs diffusers >= 0.39"
    )


def test_quantize_is_refused_on_the_release_torchao_breaks(installed):
    installed("0.36.0")
    with pytest.raises(ValueError) as error:
        parse_accelerator("quantize:int8").check_environment("cpu")
    assert "leave quantize out of the stack" in _one_line(error, "quantize", "0.36.0")


def test_group_offload_without_an_accelerator_is_refused_below_its_release(installed, wan_pipe, monkeypatch):
    installed("0.40.0")
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *a, **k: None)
    with pytest.raises(ValueError) as error:
        enable_offload(wan_pipe, "cpu", "group")
    assert _one_line(error, "group_offload_without_accelerator", "0.40.0").startswith("--offload group needs")
    assert diffusers_internals.group_offloading_of(wan_pipe.transformer) is None


def test_the_dtype_argument_loads_in_that_dtype_on_the_installed_diffusers(tmp_path, installed, wan_pair):
    from diffusers import WanTransformer3DModel

    wan_pair[1].save_pretrained(tmp_path)
    bfloat16 = diffusers_versions.dtype_kwargs(torch.bfloat16)
    assert WanTransformer3DModel.from_pretrained(tmp_path, **bfloat16).dtype == torch.bfloat16
    installed("0.39.0")
    assert diffusers_versions.dtype_kwargs(torch.bfloat16) == {"torch_dtype": torch.bfloat16}


def test_the_cache_context_reads_on_the_installed_diffusers(wan_pipe, wan_pair):
    """The router sees the pipeline's context in whichever form this diffusers gives it (a CacheContext
    from 0.41, the name alone before), and nothing outside a call."""
    names = []
    router = apply_flowblending_(wan_pipe, wan_pair[1], "L100")
    wan_pipe.transformer.register_forward_pre_hook(
        lambda *_: names.append(diffusers_internals.context_name(router.cache_context))
    )
    wan_pipe(**wan_call_kwargs(steps=2))
    assert names[:2] == ["cond", "uncond"] and router.cache_context is None
    assert re.fullmatch(r"\d+\.\d+.*", diffusers_versions.installed())


def test_a_cache_applied_after_a_plain_run_gets_each_calls_context():
    """diffusers 0.38-0.40 list the hook registries a cache context reaches at a model's first run and never
    again: a cache enabled later got no context, and Wan's uncond calls read the cond calls' state (no
    error). The same stack gives the same video whether or not the pipeline ran before it was applied."""
    videos = []
    for ran_before in (False, True):
        large, small = tiny_wan_pair()
        pipe = tiny_wan_pipeline(large)
        if ran_before:
            pipe(**wan_call_kwargs(steps=6))
        with flowblending(pipe, small, FlowBlendingConfig("L100", accelerators=["fbc:0.5"])):
            videos.append(pipe(**wan_call_kwargs(steps=6)).frames)
    assert torch.equal(*videos)


@pytest.mark.skipif(
    not diffusers_versions.has("modular_ltx"),
    reason="builds modular Wan and LTX pipelines: diffusers >= 0.38",
)
def test_a_modular_pipeline_is_refused_below_the_release_that_has_its_blocks(installed):
    from flowblending_accel.tiny_models import (
        tiny_ltx_pair,
        tiny_modular_ltx_pipeline,
        tiny_modular_wan_pipeline,
    )

    wan, ltx = tiny_modular_wan_pipeline(), tiny_modular_ltx_pipeline(tiny_ltx_pair()[0])
    installed("0.37.1")
    assert family_for(wan).name == "wan-modular"
    with pytest.raises(ValueError) as error:
        family_for(ltx)
    assert _one_line(error, "modular_ltx", "0.37.1").startswith(
        "LTXModularPipeline (ltx-modular) needs diffusers"
    )
    installed("0.36.0")
    with pytest.raises(ValueError) as error:
        family_for(wan)
    assert "route the classic WanPipeline" in _one_line(error, "modular_wan", "0.36.0")
