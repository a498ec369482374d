"""Each integration recipe, run on tiny local diffusers folders (no hub): build() from Python, and main()
end to end from a prompt string to the written video or image, with --stack, --baseline and --offload."""

import importlib.util
import os
import stat
from pathlib import Path

import pytest
import torch
from optional import needs_deepcache, needs_group_offload_here

from flowblending_accel import flowblending_stats
from flowblending_accel.tiny_models import ltx_call_kwargs, save_tiny_folders, sd_call_kwargs, wan_call_kwargs

RECIPES = Path(__file__).resolve().parent.parent / "integrations" / "recipes"
needs_ffmpeg = pytest.mark.skipif(
    importlib.util.find_spec("imageio_ffmpeg") is None,
    reason="video export needs imageio-ffmpeg: pip install flowblending-accel[video]",
)


def recipe(name):
    spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CPU = dict(
    device="cpu", dtype=torch.float32, tokenizer=None, text_encoder=None
)  # tiny folders: embeddings in
LSL_10 = {"large": 6, "small": 4}


def test_wan21_recipe(tmp_path):
    pipeline, small_path = save_tiny_folders(tmp_path, "wan", text=False)
    pipe, router = recipe("wan21_14b_1p3b").build(pipeline, small_path, stack=["dpm++:10"], **CPU)
    pipe(**{**wan_call_kwargs(steps=10)})
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert router.last_run.steps_per_model == LSL_10


def test_wan21_recipe_guidance_free_small_stage(tmp_path):
    pipeline, small_path = save_tiny_folders(tmp_path, "wan", text=False)
    pipe, router = recipe("wan21_14b_1p3b").build(pipeline, small_path, small_guidance="off", **CPU)
    pipe(**wan_call_kwargs(steps=10))
    assert router.last_run.calls_per_model == {"large": 12, "small": 4}  # one call per small step


def test_wan22_recipe_routes_both_experts(tmp_path):
    pipeline, small_path = save_tiny_folders(tmp_path, "wan2.2", text=False)
    pipe, _ = recipe("wan22_a14b_small").build(pipeline, small_path, **CPU)
    pipe(**wan_call_kwargs(steps=10))
    assert flowblending_stats(pipe).steps_per_model == LSL_10


def test_ltx_recipe(tmp_path):
    pipeline, small_path = save_tiny_folders(tmp_path, "ltx", text=False)
    pipe, router = recipe("ltx_13b_2b").build(pipeline, small_path, **CPU)
    pipe(**ltx_call_kwargs(steps=10))
    assert router.last_run.calls_per_model == LSL_10


@needs_deepcache
def test_sd_deepcache_recipe(tmp_path):
    pipeline, small_path = save_tiny_folders(tmp_path, "sd", text=False)
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
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and all(
        option in out for option in ("--stack", "--baseline", "--offload", "--seed", "--negative-prompt")
    )


def _folders(tmp_path, family):
    """Folders with text stacks (the mains take prompt strings); the Wan 2.1 small one saved bare."""
    return save_tiny_folders(tmp_path, family, bare_small=family == "wan")


MAINS = {
    "wan21_14b_1p3b": ("wan", ["--height", "16", "--width", "16", "--frames", "5"], "video.mp4"),
    "wan22_a14b_small": ("wan2.2", ["--height", "16", "--width", "16", "--frames", "5"], "video.mp4"),
    "ltx_13b_2b": ("ltx", ["--height", "32", "--width", "32", "--frames", "9"], "video.mp4"),
    "sd15_bksdm_deepcache": ("sd", ["--height", "32", "--width", "32", "--dtype", "float32"], "image.png"),
}


@needs_ffmpeg
@pytest.mark.parametrize("name", list(MAINS))
def test_recipe_main_runs_to_the_written_output(name, tmp_path, capsys):
    family, size, output = MAINS[name]
    pipeline, small = _folders(tmp_path, family)
    solver = {"sd": "dpm++-vp", "ltx": "unipc"}.get(family, "dpm++")  # LTX hands over sigmas: not DPM++
    argv = [
        "--large",
        pipeline,
        "--small",
        small,
        *size,
        "--steps",
        "20",
        "--stack",
        f"{solver}:10",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--seed",
        "3",
        "--guidance-scale",
        "2.0",
        "--negative-prompt",
        "blurry",
        "--baseline",
        "--output",
        str(tmp_path / "out" / output),
    ]
    result = recipe(name).main(argv)
    written = tmp_path / "out" / output
    assert written.stat().st_size > 0 and stat.S_IMODE(written.stat().st_mode) == 0o666 & ~_umask()
    assert result["stats"].num_steps == 10  # dpm++:10 runs 10 solver steps though --steps says 20
    assert (
        result["stats"].steps_per_model == LSL_10 and result["baseline"][0].shape == result["routed"][0].shape
    )
    out = capsys.readouterr().out
    assert "large only:" in out and "speedup" in out and "PSNR" in out and f"written to {written}" in out
    assert [p.name for p in written.parent.iterdir()] == [output]  # no temporary file left behind


@pytest.mark.parametrize("mode", ["model", pytest.param("group", marks=needs_group_offload_here)])
@pytest.mark.parametrize("name", ["wan21_14b_1p3b", "wan22_a14b_small"])
def test_recipe_offload_keeps_routing(name, mode, tmp_path):
    family = "wan" if name.startswith("wan21") else "wan2.2"
    pipeline, small = _folders(tmp_path, family)
    argv = [
        "--large",
        pipeline,
        "--small",
        small,
        "--height",
        "16",
        "--width",
        "16",
        "--frames",
        "5",
        "--steps",
        "10",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--offload",
        mode,
        "--output",
        str(tmp_path / "video.gif"),
    ]
    pytest.importorskip("imageio")
    result = recipe(name).main(argv)
    assert result["stats"].steps_per_model == LSL_10


RECIPE_FAMILIES = {
    "wan21_14b_1p3b": "wan",
    "wan22_a14b_small": "wan2.2",
    "ltx_13b_2b": "ltx",
    "sd15_bksdm_deepcache": "sd",
}


ENABLES = {
    "model": "enable_model_cpu_offload",
    "group": "enable_group_offload",
    "sequential": "enable_sequential_cpu_offload",
}


@pytest.mark.parametrize(
    "mode", [pytest.param(m, marks=needs_group_offload_here) if m == "group" else m for m in ENABLES]
)
@pytest.mark.parametrize("name", list(RECIPE_FAMILIES))
def test_recipe_offload_never_moves_the_whole_pipeline_to_the_accelerator(name, mode, tmp_path, monkeypatch):
    """A spy on every ``.to``: the pipeline is loaded on the CPU and handed to the offload mode, and no
    model, pipeline or the small one goes to the accelerator whole (this machine has none: the modes are
    recorded, not run)."""
    from diffusers import DiffusionPipeline
    from diffusers.models.modeling_utils import ModelMixin

    pipeline, small = _folders(tmp_path, RECIPE_FAMILIES[name])
    moves, modes = [], []

    def spy_to(original):
        def to(self, *args, **kwargs):
            moves.append((type(self).__name__, args, kwargs))
            return original(self, *args, **kwargs)

        return to

    monkeypatch.setattr(DiffusionPipeline, "to", spy_to(DiffusionPipeline.to))
    monkeypatch.setattr(ModelMixin, "to", spy_to(ModelMixin.to))
    for method in ("enable_model_cpu_offload", "enable_sequential_cpu_offload", "enable_group_offload"):
        monkeypatch.setattr(DiffusionPipeline, method, lambda self, *a, _m=method, **k: modes.append(_m))
    pipe, small_model, members = recipe(name).load(pipeline, small, "cuda", torch.float32, mode)
    cuda = [m for m in moves if any("cuda" in str(v) for v in (*m[1], *m[2].values()))]
    assert cuda == [] and modes == [ENABLES[mode]]
    assert next(small_model.parameters()).device.type == "cpu"
    assert members == (["offload:1"] if mode == "group" and name != "wan22_a14b_small" else [])


def test_recipe_refuses_an_output_under_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        recipe("wan21_14b_1p3b").main(["--output", str(blocker / "video.mp4"), "--device", "cpu"])


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


RECIPE_UNDER_TORCHRUN = """
import importlib.util, sys
from torchrun_on_cpu import provide_device_count
provide_device_count()
spec = importlib.util.spec_from_file_location("recipe", sys.argv[1])
recipe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recipe)
recipe.main(sys.argv[2:])
"""


@needs_ffmpeg
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["wan21_14b_1p3b", "wan22_a14b_small", "ltx_13b_2b"])
def test_recipe_context_parallel_under_torchrun_writes_once_from_rank_0(name, tmp_path):
    import subprocess

    from torchrun_on_cpu import launch_env, torchrun

    family, size, output = MAINS[name]
    pipeline, small = _folders(tmp_path, family)
    launcher = tmp_path / "launch.py"
    launcher.write_text(RECIPE_UNDER_TORCHRUN)
    written = tmp_path / "out" / output
    argv = ["--large", pipeline, "--small", small, *size, "--steps", "5", "--device", "cpu"]
    argv += ["--dtype", "float32", "--threads", "1", "--context-parallel", "2", "--output", str(written)]
    command = [*torchrun(2), str(launcher), str(RECIPES / f"{name}.py"), *argv]
    result = subprocess.run(command, capture_output=True, text=True, env=launch_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert written.stat().st_size > 0 and [p.name for p in written.parent.iterdir()] == [output]
    assert result.stdout.count(f"written to {written}") == 1


def test_recipe_context_parallel_outside_torchrun_says_how_to_launch(tmp_path, capsys):
    argv = ["--context-parallel", "2", "--device", "cpu", "--output", str(tmp_path / "video.mp4")]
    with pytest.raises(ValueError, match="launch with torchrun --nproc_per_node N"):
        recipe("wan21_14b_1p3b").main(argv)


@needs_ffmpeg
@pytest.mark.parametrize("name", ["wan21_14b_1p3b", "wan22_a14b_small", "ltx_13b_2b"])
def test_a_recipe_on_saved_folders_runs_at_their_recorded_size(name, tmp_path, capsys):
    family, size, _ = MAINS[name]
    pipeline, small = _folders(tmp_path, family)
    argv = ["--large", pipeline, "--small", small, "--device", "cpu", "--dtype", "float32"]
    result = recipe(name).main([*argv, "--output", str(tmp_path / "video")])  # no suffix: .mp4 is added
    assert (tmp_path / "video.mp4").stat().st_size > 0 and result["stats"].num_steps == 10
    width, height, frames = size[size.index("--width") + 1], size[1], size[size.index("--frames") + 1]
    err = capsys.readouterr().err
    recorded = "(the folder's flowblending_defaults.json)"
    assert f"size: {width}x{height}, {frames} frames, 10 steps {recorded}" in err
    assert f"--output {tmp_path / 'video'}: no suffix, writing {tmp_path / 'video.mp4'}" in err


def _without_recorded_size(pipeline: str) -> None:
    (Path(pipeline) / "flowblending_defaults.json").unlink()


def _never_loaded(*args, **kwargs):
    raise AssertionError("a model was loaded")


@pytest.mark.parametrize("name", ["wan21_14b_1p3b", "wan22_a14b_small"])
def test_a_recipe_refuses_a_size_the_folders_cannot_take_before_loading(name, tmp_path, monkeypatch):
    family = MAINS[name][0]
    pipeline, small = _folders(tmp_path, family)
    _without_recorded_size(pipeline)  # the recipe's own 832x480, 81 frames: past the tiny rope range
    module = recipe(name)
    monkeypatch.setattr(module, "load", _never_loaded)
    argv = ["--large", pipeline, "--small", small, "--device", "cpu", "--output", str(tmp_path / "v.mp4")]
    refusal = r"cannot run at 832x480, 81 frames, \d+ steps \(the recipe's defaults\)"
    with pytest.raises(ValueError, match=refusal):
        module.main(argv)


def test_a_recipe_on_a_folder_without_sizes_takes_its_checkpoint_size(tmp_path, monkeypatch, capsys):
    """LTX's tiny model takes the recipe's size (the 13B checkpoint's): checked, then loading starts."""
    pipeline, small = _folders(tmp_path, "ltx")
    _without_recorded_size(pipeline)
    module = recipe("ltx_13b_2b")
    monkeypatch.setattr(module, "load", _never_loaded)
    argv = ["--large", pipeline, "--small", small, "--device", "cpu", "--output", str(tmp_path / "v.mp4")]
    with pytest.raises(AssertionError, match="a model was loaded"):
        module.main(argv)
    assert "size: 608x352, 61 frames, 50 steps (the recipe's defaults)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "output, message",
    [
        ("video.txt", "--output {out}: .txt is not a format this recipe writes; use .mp4."),
        ("", "--output {out}: a folder; name the file to write"),
    ],
)
def test_a_recipe_refuses_an_output_it_cannot_write_in_one_line_before_loading(output, message, tmp_path):
    """As a script: one line on stderr, exit 2, before any model (the default hub id is never reached)."""
    import subprocess
    import sys

    out = tmp_path / output
    command = [sys.executable, str(RECIPES / "wan21_14b_1p3b.py"), "--device", "cpu", "--output", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message.format(out=out) in lines[0], done.stderr
    assert lines[0].startswith(f"python {RECIPES / 'wan21_14b_1p3b.py'}: error: ")
