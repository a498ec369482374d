"""A newcomer's first hour: compute threads that suit a busy machine, folders that know their size, files
that carry their target, early one-line errors, counters after a run, a --help that lists each command
once."""

import subprocess
import sys

import pytest
import torch

from flowblending_accel.cli import build_parser, main
from flowblending_accel.support import threads
from flowblending_accel.targets import folders
from flowblending_accel.tiny_models import save_tiny_folders

COMMANDS = ("demo", "bench", "analyze", "calibrate", "tune", "check")


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    root = tmp_path_factory.mktemp("first-hour")
    large, small = save_tiny_folders(root, "wan")
    (root / "prompts.txt").write_text("a cat\na dog\n")
    return ["--large", large, "--small", small, "--prompts", str(root / "prompts.txt")]


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_default_thread_count_leaves_the_busy_cores(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "others_busy_cores", lambda seconds=0.3: 1.0)
    assert threads.default_threads() == 1
    monkeypatch.setattr(threads, "others_busy_cores", lambda seconds=0.3: 0.1)
    assert threads.default_threads() == 2
    monkeypatch.setattr(threads, "others_busy_cores", lambda seconds=0.3: 5.0)
    assert threads.default_threads() == 1  # at least one


def test_a_starved_run_lowers_its_threads_and_says_so(monkeypatch, keep_threads):
    monkeypatch.setattr(threads, "CHECK_SECONDS", 0.0)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    others = [0.1]
    monkeypatch.setattr(threads, "_others_cores", lambda start, own: others[0])
    governor = threads.ThreadGovernor(2, chosen=False)
    governor.observe()  # an idle machine: kept
    assert governor.threads == 2 and governor.events == []
    others[0] = 0.67  # one process spinning a core gets 2/3 of a core against our two threads on two cores
    torch.set_num_threads(2)
    governor.observe(done=10)
    assert governor.threads == 1 and torch.get_num_threads() == 1
    assert governor.events[0]["done"] == 10 and "lowered to 1" in governor.describe()
    chosen = threads.ThreadGovernor(2, chosen=True)  # --threads 2: watched, kept
    chosen.observe()
    assert chosen.threads == 2 and chosen.events == []


def test_progress_lets_the_commands_governor_act(monkeypatch, keep_threads):
    from flowblending_accel.support.progress import progress

    seen = []
    monkeypatch.setattr(threads.ThreadGovernor, "observe", lambda self, done=None: seen.append(done))
    threads.use_threads(1)
    with progress("work", 3, stream=open("/dev/null", "w")) as advance:
        advance(1)
        advance(2)
    assert seen == [1, 3]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_threads(command):
    required = {"analyze": ["--output", "o"], "calibrate": ["--output", "o"], "tune": ["--output", "o"]}
    args = build_parser().parse_args([command, "--threads", "1", *required.get(command, [])])
    assert args.threads == 1
    assert build_parser().parse_args([command, *required.get(command, [])]).threads is None  # automatic


def test_every_recipe_takes_threads():
    """Every recipe's command line is _common.parser's, and its run sets the threads (use_threads)."""
    from pathlib import Path

    recipes = Path(__file__).resolve().parent.parent / "integrations" / "recipes"
    sys.path.insert(0, str(recipes))
    try:
        from _common import Defaults, parser
    finally:
        sys.path.remove(str(recipes))
    args = parser("x", Defaults("a", "b", 16, 16, 5, 10, 5.0)).parse_args(["--threads", "1"])
    assert args.threads == 1
    for script in recipes.glob("*.py"):
        if script.name != "_common.py":
            text = script.read_text()
            assert "parser(__doc__, DEFAULTS)" in text and "return run(" in text


def test_help_lists_each_command_once(capsys):
    assert main(["--help"]) == 0
    printed = capsys.readouterr().out
    for command in (*COMMANDS, "plan", "tiny", "train-demo", "export-demo"):
        assert len([line for line in printed.splitlines() if line.strip().startswith(command + " ")]) == 1


def test_a_tuned_file_refuses_another_target(tmp_path, capsys):
    tuned = tmp_path / "tuned.toml"
    tuned.write_text(
        'tuned_for = { target = "random:tiny-wan" }\ntarget = "random:tiny-wan"\nschedule = "L40-S60"\n'
    )
    assert (
        main(["bench", "--config", str(tuned), "--target", "embedded", "--output", str(tmp_path / "o")]) == 2
    )
    error = capsys.readouterr().err
    assert "tuned for --target random:tiny-wan, but this run's target is the embedded pair" in error


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--output", "/proc/nope"], "--output /proc/nope: cannot create it"),
        (["--large", "./nope", "--small", "./nope"], "--large ./nope: no such folder."),
        (["--large", "nope/pipeline", "--small", "nope/small"], "not a hub model in the local cache"),
        (["--height", "4096", "--width", "4096"], "cannot run at 4096x4096, 5 frames, 10 steps"),
    ],
)
def test_early_errors_are_one_line_before_any_model(wan, tmp_path, capsys, no_loading, extra, message):
    argv = ["bench", *wan]
    for flag in ("--large", "--small"):
        if flag in extra:  # the case replaces the folders
            index = argv.index(flag)
            del argv[index : index + 2]
    argv += ["--output", str(tmp_path / "o")] if "--output" not in extra else []
    assert main([*argv, *extra]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1 and "Traceback" not in error
    if "4096" in message:
        assert "16x16, 5 frames, 10 steps works" in error


def test_a_missing_folder_under_a_folder_here_is_no_such_folder(tmp_path, monkeypatch):
    """``tiny-wan/pipeline`` reads like a hub id, but ``tiny-wan`` is a folder here: a folder was meant."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-wan").mkdir()
    with pytest.raises(ValueError, match=r"^--large tiny-wan/pipeline: no such folder\.$"):
        folders.check_local_or_cached("tiny-wan/pipeline", "--large")
    with pytest.raises(ValueError, match="not a hub model in the local cache"):
        folders.check_local_or_cached("someone/model", "--large")


def test_an_early_error_needs_no_heavy_import(tmp_path):
    """The refusal of a missing folder or output comes before diffusers' pipelines are imported."""
    script = (
        "import sys; from flowblending_accel.cli import main; "
        "code = main(['bench', '--large', './nope', '--small', './nope', '--prompts', 'p', "
        "'--output', 'o']); "
        "print(code, 'diffusers.hooks' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr


def test_ltx_gets_a_default_stack_it_can_take(tmp_path, capsys):
    large, small = save_tiny_folders(tmp_path / "ltx", "ltx")
    (tmp_path / "p.txt").write_text("a cat\n")
    argv = [
        "bench",
        "--large",
        large,
        "--small",
        small,
        "--prompts",
        str(tmp_path / "p.txt"),
        "--repeats",
        "1",
    ]
    assert main([*argv, "--output", str(tmp_path / "o")]) == 0
    error = capsys.readouterr().err
    assert "stack: unipc:5 fbc:0.05 compile (the default for a ltx pipeline)" in error
    assert "size: 32x32, 9 frames, 10 steps (the folder's flowblending_defaults.json)" in error


def test_counters_after_a_run_of_a_step_reduction_and_a_cache():
    from flowblending_accel.accelerators import FlowBlendingConfig, applied_stack, flowblending
    from flowblending_accel.tiny_models import tiny_wan_pair, tiny_wan_pipeline, wan_call_kwargs

    large, small = tiny_wan_pair()
    pipe = tiny_wan_pipeline(large)
    with flowblending(pipe, small, FlowBlendingConfig("L40-S40-L20", accelerators=["dpm++:6", "fbc:0.3"])):
        stack = applied_stack(pipe)
        pipe(**wan_call_kwargs(steps=6))
        counters = stack.counters()
    assert counters["dpm++"]["runs"] == 1 and counters["dpm++"]["steps_per_run"] == 6
    fbc = counters["fbc"]
    assert fbc["large.calls"] + fbc["small.calls"] == 12 and "large.tail_skipped" in fbc


def test_a_note_between_counted_steps_is_a_line_of_its_own():
    import io

    from flowblending_accel.support.progress import progress

    stream = io.StringIO()
    with progress("benchmarking rows", 4, stream=stream) as advance:
        advance.note("warm-up: +compile (compiles the models)")
        advance(4)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "benchmarking rows: 0/4 (0 s)"
    assert lines[1] == "benchmarking rows: 0/4 (0 s) — warm-up: +compile (compiles the models)"
    assert lines[-1] == "benchmarking rows: 4/4 (0 s)"
