"""Every tool on a user's own pipeline: diffusers folders of each family (Wan 2.1, Wan 2.2, LTX, Stable
Diffusion, Flux) with tiny text stacks, a factory file, and a config file, run through the command line as a
user would; and every input a user can get wrong refused with its reason before a model is loaded."""

import json
import re

import pytest

from flowblending_accel.cli import main
from flowblending_accel.targets import factory, folders
from flowblending_accel.tiny_models import FOLDER_FAMILIES, save_tiny_folders

PROMPTS = [
    "a cat playing guitar",
    "a dog on the moon",
    "a polar bear washing dishes",
    "a teddy bear in the city",
]
# family -> (size flags, a step solver it takes, calls per model of L40-S40-L20 at 10 steps)
FAMILIES = {
    "wan": (["--height", "16", "--width", "16", "--frames", "5"], "dpm++:6", {"large": 12, "small": 8}),
    "wan2.2": (["--height", "16", "--width", "16", "--frames", "5"], "dpm++:6", {"large": 12, "small": 8}),
    "ltx": (["--height", "32", "--width", "32", "--frames", "9"], "unipc:6", {"large": 6, "small": 4}),
    "sd": (["--height", "32", "--width", "32"], "dpm++-vp:6", {"large": 6, "small": 4}),
    "flux": (["--height", "16", "--width", "16"], "unipc:6", {"large": 6, "small": 4}),
}
FACTORY = """
import torch
from flowblending_accel.tiny_models import tiny_flux_pair, tiny_flux_pipeline, with_text


def make(device="cpu", dtype=torch.float32):
    large, small = tiny_flux_pair()
    pipe = with_text(tiny_flux_pipeline(large), "flux").to(device)
    call = {"height": 16, "width": 16, "num_inference_steps": 10}
    call.update(true_cfg_scale=2.0, negative_prompt="red")  # true CFG: two calls a step
    return {"pipe": pipe, "small": small.to(device), "call": call, "prompts": PROMPTS}


def not_a_pipeline():
    return {"pipe": 3, "small": 4}
""".replace("PROMPTS", repr(PROMPTS))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Every family's tiny folders and a prompts file, saved once for the module."""
    root = tmp_path_factory.mktemp("folders")
    paths = {family: save_tiny_folders(root / family, family) for family in FOLDER_FAMILIES}
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    paths["prompts"] = str(root / "prompts.txt")
    return paths


def _target(saved, family):
    """No size and no step flags: the folders record theirs (tiny --save writes them) and the tools use it."""
    large, small = saved[family]
    return ["--large", large, "--small", small, "--prompts", saved["prompts"]]


def _size_used(capsys, family) -> None:
    flags = FAMILIES[family][0]
    width, height = flags[flags.index("--width") + 1], flags[flags.index("--height") + 1]
    frames = f", {flags[flags.index('--frames') + 1]} frames" if "--frames" in flags else ""
    printed = capsys.readouterr().err
    assert f"size: {width}x{height}{frames}, 10 steps (the folder's flowblending_defaults.json)" in printed


@pytest.mark.parametrize("family", list(FAMILIES))
def test_bench_on_each_family_folder(family, saved, tmp_path, capsys):
    solver, calls = FAMILIES[family][1], FAMILIES[family][2]
    argv = ["bench", *_target(saved, family), "--stack", solver, "--repeats", "1"]
    assert main([*argv, "--output", str(tmp_path / "out")]) == 0
    _size_used(capsys, family)
    rows = json.loads((tmp_path / "out" / "bench.json").read_text())["rows"]
    baseline, blended, reduced = rows
    assert [row["label"] for row in rows] == [
        "baseline (large only)",
        "+FlowBlending L40-S40-L20",
        f"+{solver}",
    ]
    assert baseline["calls"] == {"large": calls["large"] + calls["small"]}
    assert blended["calls"] == calls and reduced["steps"] == 6
    # 6 of 10 steps on the large model: exactly 60 % of its FLOPs, plus the small model's.
    assert blended["flops"]["large"] == pytest.approx(0.6 * baseline["flops"]["large"])
    assert 0 < blended["flops"]["small"] < 0.4 * baseline["flops"]["large"]
    assert blended["quality"]["ssim"] is not None


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_check_analyze_calibrate_on_each_family_folder(family, saved, tmp_path, capsys):
    target, solver = _target(saved, family), FAMILIES[family][1]
    expected = tmp_path / "expected.csv"
    check = ["check", *target, "--stack", solver, "--expected", str(expected)]
    assert main([*check, "--update"]) == 0 and main(check) == 0
    _size_used(capsys, family)
    rows = dict(line.split(",")[1:3] for line in expected.read_text().splitlines()[2:])
    per_step = FAMILIES[family][2]["large"] // 6  # one call a step, or two with split CFG
    assert (rows["calls.large"], rows["calls.small"]) == (
        str(3 * per_step),
        str(3 * per_step),
    )  # 0,1,5 / 2,3,4

    out = tmp_path / "analyze"
    assert main(["analyze", *target, "--scorers", "psnr", "--seeds", "1", "--output", str(out)]) == 0
    _size_used(capsys, family)
    curve = json.loads((out / "analysis.json").read_text())["curve"]
    assert len(curve["sigmas"]) == 10 and curve["samples"] == len(PROMPTS)  # CFG branches folded in

    out = tmp_path / "calibrate"
    calibrate = ["calibrate", *target, "--scorers", "psnr", "--flop-budget", "0.7", "--seeds", "1"]
    assert main([*calibrate, "--holdout-seeds", "1", "--output", str(out)]) == 0
    _size_used(capsys, family)
    document = json.loads((out / "calibration.json").read_text())
    assert document["calibration"]["flop_ratio"] <= 0.7
    fit, held = document["fit"]["prompts"], document["held_out"]["prompts"]
    assert len(fit) == len(held) == 2 and not set(fit) & set(held)
    assert list(document["held_out"]["rows"]) == ["LLL", "match", "calibrated"]
    assert document["held_out"]["rows"]["calibrated"]["schedule"] == document["calibration"]["schedule"]
    report = (out / "calibration.md").read_text()
    assert "Fit set (the calibration saw only these)" in report and "never seen by the calibration" in report


@pytest.fixture
def no_loading(monkeypatch):
    """Loading a folder or calling a factory fails the test: a refusal must come before it."""

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was refused")

    monkeypatch.setattr(folders, "folder_target", loaded)
    monkeypatch.setattr(factory, "factory_target", loaded)


def test_check_runs_the_config_files_scenarios_with_no_flags(saved, tmp_path, monkeypatch):
    (ltx_large, ltx_small), (flux_large, flux_small) = saved["ltx"], saved["flux"]
    (tmp_path / "flowblending.toml").write_text(
        f"""
large = "{ltx_large}"
small = "{ltx_small}"
prompts = "{saved["prompts"]}"
height = 32
width = 32
frames = 9
steps = 10

[check]
expected = "expected.csv"

[[check.scenarios]]
name = "ltx-lsl"
metrics = ["calls.", "flops.", "trace_hash"]

[[check.scenarios]]
name = "flux-fbc"
large = "{flux_large}"
small = "{flux_small}"
height = 16
width = 16
stack = ["fbc:0.05"]
"""
    )
    monkeypatch.chdir(tmp_path)
    assert main(["check", "--update"]) == 0
    lines = (tmp_path / "expected.csv").read_text().splitlines()[2:]
    by_scenario = {}
    for line in lines:
        scenario, metric = line.split(",")[:2]
        by_scenario.setdefault(scenario, set()).add(metric)
    assert set(by_scenario) == {"ltx-lsl", "flux-fbc"}
    assert by_scenario["ltx-lsl"] == {
        "calls.large",
        "calls.small",
        "trace_hash",
        "flops.large",
        "flops.small",
    }
    assert "segment_starts_full_compute" in by_scenario["flux-fbc"]  # the cache's counters are gated
    assert main(["check"]) == 0


def test_a_factory_file_runs_bench_and_check(tmp_path):
    (tmp_path / "mine.py").write_text(FACTORY)
    target = ["--target", f"{tmp_path / 'mine.py'}:make"]
    argv = ["bench", *target, "--stack", "unipc:6", "--repeats", "1", "--output", str(tmp_path / "b")]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "b" / "bench.json").read_text())["rows"]
    assert rows[1]["calls"] == {"large": 12, "small": 8}  # true CFG: two calls a step
    expected = str(tmp_path / "expected.csv")
    assert main(["check", *target, "--expected", expected, "--update"]) == 0
    assert main(["check", *target, "--expected", expected]) == 0


REFUSALS = {
    "missing folder": (["bench", "--large", "nowhere/here/x", "--small", "y"], "no such folder"),
    "folder without a denoiser": (
        ["bench", "--large", "{no_denoiser}", "--small", "{wan_small}", "--prompts", "{prompts}"],
        "WanPipeline has no denoiser FlowBlending knows",
    ),
    "not a pipeline folder": (
        ["bench", "--large", "{sd_small}", "--small", "{sd_small}"],
        "no model_index.json",
    ),
    "small of another family": (
        ["bench", "--large", "{wan_large}", "--small", "{ltx_small}", "--prompts", "{prompts}"],
        "small config.in_channels=8 but",
    ),
    "no prompts": (["bench", "--large", "{wan_large}", "--small", "{wan_small}"], "give the prompts"),
    "frames on an image pipeline": (
        [
            "bench",
            "--large",
            "{sd_large}",
            "--small",
            "{sd_small}",
            "--prompts",
            "{prompts}",
            "--frames",
            "3",
        ],
        "--frames .* does not apply to StableDiffusionPipeline",
    ),
    "a prompt's own argument the pipeline does not take": (
        ["bench", "--large", "{sd_large}", "--small", "{sd_small}", "--prompts", "{jsonl}"],
        "'a cat' sets num_frames, which StableDiffusionPipeline's call does not take",
    ),
    "transformer cache on a UNet": (
        [
            "bench",
            "--large",
            "{sd_large}",
            "--small",
            "{sd_small}",
            "--prompts",
            "{prompts}",
            "--stack",
            "fbc",
        ],
        "unet is a UNet",
    ),
    "solver without sigmas on LTX": (
        [
            "bench",
            "--large",
            "{ltx_large}",
            "--small",
            "{ltx_small}",
            "--prompts",
            "{prompts}",
            "--stack",
            "dpm++",
        ],
        "hands the scheduler its own sigma grid",
    ),
    "flow solver on a VP pipeline": (
        [
            "bench",
            "--large",
            "{sd_large}",
            "--small",
            "{sd_small}",
            "--prompts",
            "{prompts}",
            "--stack",
            "euler",
        ],
        "does not fit the unet pipeline's diffusion",
    ),
    "schedule typo": (
        [
            "bench",
            "--large",
            "{wan_large}",
            "--small",
            "{wan_small}",
            "--prompts",
            "{prompts}",
            "--schedule",
            "L4-X",
        ],
        "unknown model letter 'X'",
    ),
    "unknown preset": (["bench", "--target", "random:wan9"], "random preset 'wan9' is unknown"),
    "factory file missing": (["bench", "--target", "nowhere.py:make"], "nowhere.py is not a file"),
    "factory module missing": (["bench", "--target", "no_such_module:make"], "cannot import no_such_module"),
    "unknown scorer": (
        [
            "analyze",
            "--large",
            "{wan_large}",
            "--small",
            "{wan_small}",
            "--prompts",
            "{prompts}",
            "--scorers",
            "x",
        ],
        "scorer 'x' is unknown",
    ),
    "temporal on images": (
        [
            "analyze",
            "--large",
            "{sd_large}",
            "--small",
            "{sd_small}",
            "--prompts",
            "{prompts}",
            "--scorers",
            "temporal",
        ],
        "makes images; it needs videos",
    ),
    "one prompt to calibrate": (
        ["calibrate", "--large", "{wan_large}", "--small", "{wan_small}", "--prompts", "{one}"],
        "needs at least 2 prompts",
    ),
    "windows longer than the run": (
        [
            "analyze",
            "--large",
            "{wan_large}",
            "--small",
            "{wan_small}",
            "--prompts",
            "{prompts}",
            "--steps",
            "4",
        ]
        + ["--windows", "5"],
        "--windows 5 is longer than the run's 4 steps",
    ),
    "random target analysed": (["analyze", "--target", "random:tiny-wan"], "no quality to analyse"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_user_errors_are_refused_before_loading(case, saved, tmp_path, capsys, no_loading):
    (tmp_path / "one.txt").write_text(PROMPTS[0] + "\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat", "num_frames": 9}\n')
    (tmp_path / "vae_only").mkdir()
    index = {
        "_class_name": "WanPipeline",
        "vae": ["diffusers", "AutoencoderKLWan"],
        "transformer": [None, None],
    }
    (tmp_path / "vae_only" / "model_index.json").write_text(json.dumps(index))
    names = {
        "prompts": saved["prompts"],
        "one": str(tmp_path / "one.txt"),
        "jsonl": str(tmp_path / "p.jsonl"),
        "no_denoiser": str(tmp_path / "vae_only"),
    }
    for family in ("wan", "ltx", "sd"):
        names[f"{family}_large"], names[f"{family}_small"] = saved[family]
    argv, message = REFUSALS[case]
    argv = [part.format(**names) for part in argv]
    if argv[0] in ("analyze", "calibrate"):
        argv += ["--output", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_a_factory_returning_no_pipeline_is_refused(tmp_path, capsys):
    (tmp_path / "mine.py").write_text(FACTORY)
    assert (
        main(["bench", "--target", f"{tmp_path / 'mine.py'}:not_a_pipeline", "--output", str(tmp_path)]) == 2
    )
    assert '"pipe" is a int, not a diffusers pipeline' in capsys.readouterr().err


def test_target_settings_come_from_one_declaration(tmp_path, monkeypatch, capsys):
    """Every TargetOptions field is a flag of each target-taking command and a key of the config file under
    the same name; the flag wins over the file, the file over the target's default."""
    from dataclasses import fields

    from flowblending_accel.cli import build_parser
    from flowblending_accel.cli.targeting import target_settings
    from flowblending_accel.targets.options import CALL_OPTIONS, TargetOptions, flag

    monkeypatch.chdir(tmp_path)
    (tmp_path / "flowblending.toml").write_text("steps = 5\nwidth = 24\nguidance_scale = 2.5\n")
    parser = build_parser()
    for command in ("bench", "check", "analyze", "calibrate", "tune"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        shown = capsys.readouterr().out
        assert all(f"{flag(f.name)} " in shown for f in fields(TargetOptions)), command
    args = parser.parse_args(["bench", "--steps", "7", "--height", "16"])
    options, _ = target_settings(args)
    assert (options.steps, options.height, options.width, options.guidance_scale) == (7, 16, 24, 2.5)
    assert options.given_call_options() == {"height": 16, "width": 24, "steps": 7, "guidance_scale": 2.5}
    assert CALL_OPTIONS["frames"] == "num_frames" and flag("gpu_memory") == "--gpu-memory"


@pytest.fixture(scope="module")
def unsized(saved, tmp_path_factory):
    """The same folders without the size tiny --save records: the tools fall back to the pipeline's own."""
    import shutil

    root = tmp_path_factory.mktemp("unsized")
    paths = {}
    for family in ("wan", "wan2.2", "ltx"):
        large, small = (root / family / "pipeline", root / family / "small")
        shutil.copytree(saved[family][0], large)
        shutil.copytree(saved[family][1], small)
        (large / "flowblending_defaults.json").unlink()
        paths[family] = (str(large), str(small))
    return paths


@pytest.mark.parametrize("family", ["wan", "wan2.2", "ltx", "sd", "flux"])
def test_plan_memory_uses_the_folders_size_and_says_so(family, saved, capsys):
    large, small = saved[family]
    assert main(["plan", "--memory", "--large", large, "--small", small]) == 0
    printed = capsys.readouterr().out
    flags = FAMILIES[family][0]
    width, height = flags[flags.index("--width") + 1], flags[flags.index("--height") + 1]
    frames = f", {flags[flags.index('--frames') + 1]} frames" if "--frames" in flags else ""
    assert f"size: {width}x{height}{frames}, 10 steps (the folder's flowblending_defaults.json)" in printed
    assert "| sequential |" in printed


@pytest.mark.parametrize("family", ["wan", "wan2.2"])
def test_plan_memory_refuses_a_size_the_models_cannot_take_naming_one_that_works(family, saved, capsys):
    large, small = saved[family]
    argv = ["plan", "--memory", "--large", large, "--small", small]
    assert main([*argv, "--height", "480", "--width", "832", "--frames", "81"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("flowblending-accel plan: error: --height/--width/--frames: WanPipeline")
    assert error.strip().endswith("16x16, 5 frames, 10 steps works.") and len(error.splitlines()) == 1


# Every command that takes folders, with the least it needs to run (the folders give the target).
FOLDER_COMMANDS = {
    "bench": ["--stack", "--repeats", "1"],
    "analyze": ["--scorers", "psnr", "--seeds", "1"],
    "calibrate": ["--scorers", "psnr", "--flop-budget", "0.7", "--seeds", "1", "--holdout-seeds", "1"],
    "tune": ["--scorers", "psnr", "--seeds", "1", "--holdout-seeds", "1", "--step-counts", "10"],
    "check": ["--stack", "--expected", "expected.csv", "--update"],
}


def _folder_argv(command, folders, prompts, tmp_path):
    large, small = folders
    argv = [command, "--large", large, "--small", small, "--prompts", prompts, *FOLDER_COMMANDS[command]]
    if command == "check":
        return [arg.replace("expected.csv", str(tmp_path / "expected.csv")) for arg in argv]
    return [*argv, "--output", str(tmp_path / "out")]


@pytest.mark.parametrize("command", list(FOLDER_COMMANDS))
@pytest.mark.parametrize("family", ["wan", "wan2.2"])
def test_without_a_recorded_size_every_command_refuses_the_default_in_one_line(
    family, command, unsized, saved, tmp_path, capsys, no_loading
):
    """Wan's own default (832x480, 81 frames) is past the tiny model's positional range: refused before any
    model is loaded, naming the pipeline's defaults and a size that works."""
    assert main(_folder_argv(command, unsized[family], saved["prompts"], tmp_path)) == 2
    error = capsys.readouterr().err.strip()
    assert "cannot run at 832x480, 81 frames (the pipeline's own defaults)" in error
    assert error.endswith("frames works.") and len(error.splitlines()) == 1


@pytest.mark.parametrize("command", list(FOLDER_COMMANDS))
def test_without_a_recorded_size_ltx_runs_at_its_pipelines_defaults(
    command, unsized, saved, tmp_path, capsys, no_loading
):
    """LTX's tiny model takes its pipeline's default size: every check passes and the build starts there."""
    with pytest.raises(AssertionError, match="a model was loaded"):
        main(_folder_argv(command, unsized["ltx"], saved["prompts"], tmp_path))
    large, small = unsized["ltx"]
    assert main(["plan", "--memory", "--large", large, "--small", small]) == 0
    assert "size: 704x512, 161 frames (the pipeline's own defaults)" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("family", ["wan2.2", "ltx"])
def test_tune_on_each_video_family_folder(family, saved, tmp_path):
    argv = _folder_argv("tune", saved[family], saved["prompts"], tmp_path)
    assert main([*argv, "--repeats", "1", "--max-calls", "40"]) == 0
    document = json.loads((tmp_path / "out" / "tune.json").read_text())
    assert document["chosen"]["bench"].endswith("tuned.toml")
