"""analyze, calibrate and tune under torchrun on this CPU (gloo): under 2 and 4 processes calibrate and tune
give the pick and the report one process gives, each rank making about 1/N of the calls (counted from the
journal); context-parallel groups split each call while the calls shard across the groups; a rank that
raises makes every rank exit non-zero; and every example of docs/cluster.md runs as written, with tiny
folders for the real ones (the two-node line as two torchrun launchers on this machine)."""

import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from test_resume import SCORER, calls_of, wait_for
from torchrun_on_cpu import launch_env, torchrun

from flowblending_accel.cli import main
from flowblending_accel.tiny_models import save_tiny_folders

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--seeds", "1", "--holdout-seeds", "1", "--threads", "1", "--scorers", "psnr", "ssim"]
SIZE = ["--height", "16", "--width", "16", "--frames", "5", "--steps", "6"]
TOOLS = {
    "calibrate": ["--sensitivity-window", "0"],
    "tune": ["--step-counts", "6", "4", "--cache-thresholds", "0.3", "--repeats", "1"],
}
# What differs between any two runs (the command, the run's cost and wall times, tuned.toml's paths relative
# to the output folder), and tune's replay counts, which depend on which calls one rank held in memory
# before (not the outputs).
DIFFERING = {"command", "run", "timing", "tuned_target"}
SPREAD = ("denoiser_calls_computed", "denoiser_calls_replayed")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    large, small = save_tiny_folders(root, "wan")
    (root / "prompts.txt").write_text("a cat\na dog\na bear\na fox\n")
    (root / "scorer.py").write_text(SCORER)
    return {"root": root, "large": large, "small": small, "prompts": str(root / "prompts.txt")}


def target(folders) -> list[str]:
    return ["--large", folders["large"], "--small", folders["small"], "--prompts", folders["prompts"]]


def report(output: Path, tool: str) -> dict:
    document = json.loads((output / ("calibration.json" if tool == "calibrate" else "tune.json")).read_text())
    kept = {name: value for name, value in document.items() if name not in DIFFERING}
    if tool == "tune":
        kept["cost"] = {name: value for name, value in kept["cost"].items() if name not in SPREAD}
        kept["chosen"] = {name: value for name, value in kept["chosen"].items() if name != "bench"}
    return kept


def launched(processes: int, argv: list[str], env=None, script=None) -> subprocess.CompletedProcess:
    program = [script] if script else ["-m", "flowblending_accel.cli"]
    return subprocess.run(
        [*torchrun(processes), *program, *argv],
        capture_output=True,
        text=True,
        timeout=900,
        env=env or launch_env(),
    )


@pytest.fixture(scope="module")
def single(folders, tmp_path_factory):
    """Each tool's one-process run."""
    found = {}
    for tool, extra in TOOLS.items():
        output = tmp_path_factory.mktemp(f"{tool}-one")
        assert main([tool, *target(folders), *SIZE, *FAST, *extra, "--output", str(output)]) == 0
        found[tool] = output
    return found


@pytest.mark.parametrize("processes", [2, 4])
@pytest.mark.parametrize("tool", list(TOOLS))
def test_under_n_processes_the_calls_are_shared_and_the_report_is_one_process_s(
    folders, single, tmp_path, tool, processes
):
    output = tmp_path / "ranks"
    run = launched(processes, [tool, *target(folders), *SIZE, *FAST, *TOOLS[tool], "--output", str(output)])
    assert run.returncode == 0, run.stderr[-3000:]
    assert report(output, tool) == report(single[tool], tool)
    lines = [line for line in calls_of(output) if line["what"]["pass"] != "timing"]
    made = [sum(line["rank"] == rank for line in lines) for rank in range(processes)]
    assert sum(made) == len([line for line in calls_of(single[tool]) if line["what"]["pass"] != "timing"])
    journal = "".join(path.read_text() for path in (output / "journal").glob("*.jsonl"))
    scoring_only = journal.count('"pass": "self-score"') + journal.count(
        '"role": "flops"'
    )  # no pipeline call
    assert max(made) - min(made) <= 1 + scoring_only, made  # dealt round-robin: about 1/N each
    assert f"{processes} ranks share them" in run.stderr


def test_a_rank_that_raises_makes_every_rank_exit_non_zero(folders, tmp_path):
    argv = ["calibrate", *target(folders), *SIZE, *FAST[:-3], "--sensitivity-window", "0"]
    argv += ["--scorers", "psnr", f"{folders['root'] / 'scorer.py'}:closeness", "--output", str(tmp_path)]
    run = launched(2, argv, env={**launch_env(), "FAIL_ON_RANK": "1"})
    assert run.returncode != 0
    assert "the scorer failed on this rank" in run.stderr  # rank 1's own error
    assert "rank 1: the scorer failed on this rank" in run.stderr  # rank 0's: it names the rank


def test_sigterm_to_torchrun_stops_every_rank_and_the_same_line_resumes(folders, tmp_path):
    """The scheduler's SIGTERM goes to torchrun, which forwards it to every rank: each stops (a rank holding
    in a call past the grace abandons it), they exit together with the line to resume; the same command on
    one process (the rank count may change) then makes only the missing calls and writes the one-process
    report."""
    argv = [
        "calibrate",
        *target(folders),
        *SIZE,
        *FAST,
        *TOOLS["calibrate"],
        "--output",
        str(tmp_path / "out"),
    ]
    argv[argv.index("ssim")] = f"{folders['root'] / 'scorer.py'}:closeness"
    env = {**launch_env(), "HOLD_AT_FOURTH_CALL": str(tmp_path / "holding"), "FLOWBLENDING_STOP_GRACE": "2"}
    command = [*torchrun(2), "-m", "flowblending_accel.cli", *argv]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(tmp_path / "holding", process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert (
        process.returncode != 0 and "stopped by SIGTERM" in stderr and "run the same command again" in stderr
    )
    before = calls_of(tmp_path / "out")
    assert before and not (tmp_path / "out" / "calibration.json").exists()
    one = tmp_path / "one"  # this scorer's single-process report
    assert main([*argv[:-1], str(one)]) == 0
    assert main(argv) == 0  # resumed by one process: both ranks' files read, the rest made here
    assert report(tmp_path / "out", "calibrate") == report(one, "calibrate")
    assert sorted(line["key"] for line in calls_of(tmp_path / "out")) == sorted(
        line["key"] for line in calls_of(one)
    )  # each call made once, across the two launches


def test_context_parallel_groups_split_each_call_and_the_calls_shard_across_groups(folders, single, tmp_path):
    script = tmp_path / "cli_on_cpu.py"  # diffusers divides by the accelerator count; the CPU counts as one
    script.write_text(
        "import sys\nfrom torchrun_on_cpu import provide_device_count\nprovide_device_count()\n"
        "from flowblending_accel.cli import main\nsys.exit(main())\n"
    )
    output = tmp_path / "cp"
    argv = ["calibrate", *target(folders), *SIZE, *FAST, *TOOLS["calibrate"], "--context-parallel", "2"]
    run = launched(4, [*argv, "--output", str(output)], script=str(script))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 ranks share them" in run.stderr  # two groups of two
    made = {line["rank"] for line in calls_of(output)}
    assert made == {0, 2}  # each group's first rank journals the calls the group made
    got, expected = report(output, "calibrate"), report(single["calibrate"], "calibrate")
    assert got["calibration"]["schedule"] == expected["calibration"]["schedule"]
    for name, value in expected["calibration"]["quality"].items():  # attention summed in another order
        assert got["calibration"]["quality"][name] == pytest.approx(value, rel=1e-4)


def _blocks() -> list[str]:
    text = (ROOT / "docs" / "cluster.md").read_text()
    return re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _as_here(block: str, folders, output: Path, port: int, processes: int) -> str:
    """A block of the page with stand-ins for the real: the tiny folders for the real ones, their size and a
    fast workload after --output, the CPU for the GPUs, this machine and a free port for the head node, this
    interpreter's torchrun and command."""
    extra = " ".join([*SIZE, *FAST, *TOOLS["calibrate"]])
    for option, value in {
        "--large": folders["large"],
        "--small": folders["small"],
        "--prompts": folders["prompts"],
    }.items():
        block = re.sub(rf"{option} \S+", f"{option} {value}", block)
    block = re.sub(r"--output \S+", f"--output {output} {extra}", block)
    block = block.replace("--height 480 --width 832 --frames 81 --steps 50", "").replace(
        "--device cuda", "--device cpu"
    )
    block = re.sub(r"(--rdzv-endpoint \S*?):29500", rf"\g<1>:{port}", block).replace("head-node", "127.0.0.1")
    block = block.replace("--nproc_per_node 8", f"--nproc_per_node {processes}")
    block = block.replace("flowblending-accel ", f"{shlex.quote(sys.executable)} -m flowblending_accel.cli ")
    return block.replace("torchrun ", f"{shlex.join(torchrun(1)[:3])} ")


def test_every_example_of_the_cluster_page_runs(folders, tmp_path):
    one_node, two_nodes, slurm, again = _blocks()
    env = launch_env()
    output = tmp_path / "one-node"
    run = subprocess.run(
        ["bash", "-c", _as_here(one_node, folders, output, 0, 2)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    whole = report(output, "calibrate")
    lines = len(calls_of(output))
    rerun = subprocess.run(
        ["bash", "-c", _as_here(again, folders, output, 0, 1)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert len(calls_of(output)) == lines and report(output, "calibrate") == whole  # nothing made again

    output = tmp_path / "two-nodes"  # two launchers stand in for the two nodes, one process each
    command = _as_here(two_nodes, folders, output, _free_port(), 1)
    nodes = [
        subprocess.Popen(
            ["bash", "-c", command], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for node in nodes:
        _, stderr = node.communicate(timeout=900)
        assert node.returncode == 0, stderr[-3000:]
    assert report(output, "calibrate") == whole and {line["rank"] for line in calls_of(output)} == {0, 1}

    output = tmp_path / "slurm"
    bin_folder = tmp_path / "bin"  # srun starts the batch step's task on each of the two nodes: here, twice
    bin_folder.mkdir()
    for name, body in {
        "scontrol": "echo 127.0.0.1\n",
        "srun": '"$@" & first=$!\n"$@"; second=$?\nwait $first && exit $second\n',
    }.items():
        (bin_folder / name).write_text(f"#!/bin/bash\n{body}")
        (bin_folder / name).chmod(stat.S_IRWXU)
    script = tmp_path / "calib.sbatch"
    script.write_text(_as_here(slurm, folders, output, _free_port(), 1))
    slurm_env = {
        **env,
        "PATH": f"{bin_folder}{os.pathsep}{env['PATH']}",
        "SLURM_JOB_NODELIST": "node[1-2]",
        "SLURM_NNODES": "2",
        "SLURM_JOB_ID": "33",
    }
    for _ in range(2):  # the job, then the same job requeued after a preemption: it resumes
        batch = subprocess.run(
            ["bash", str(script)], env=slurm_env, capture_output=True, text=True, timeout=900
        )
        assert batch.returncode == 0, batch.stderr[-3000:]
    assert report(output, "calibrate") == whole
    assert len(calls_of(output)) == lines  # the requeued job made no call again
