"""The shipped GitHub workflow installs from the repository, names only files that exist, and every
flowblending-accel command in it parses."""

import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from flowblending_accel.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / "integrations" / "github" / "flowblending-check.yml"


def _run_lines(with_folder=False):
    """Each step's commands (with the folder they run in, relative to the repository, if asked)."""
    workflow = yaml.safe_load(WORKFLOW.read_text())
    for job in workflow["jobs"].values():
        default = job.get("defaults", {}).get("run", {}).get("working-directory", ".")
        for step in job["steps"]:
            if "run" in step:
                run = step["run"].replace("\\\n", " ")
                yield (run, step.get("working-directory", default)) if with_folder else run


def test_workflow_installs_from_the_repository_not_pypi():
    runs = "\n".join(_run_lines())
    assert (
        'pip install "${FLOWBLENDING_ACCEL}[demo]"' in runs and 'pip install "flowblending-accel' not in runs
    )
    assert yaml.safe_load(WORKFLOW.read_text())["env"]["FLOWBLENDING_ACCEL"] == "."


def test_every_path_the_workflow_names_exists():
    paths = re.findall(r"(?:benchmarks|integrations)/[\w./-]+", "\n".join(_run_lines()))
    folders = {folder for _, folder in _run_lines(with_folder=True)}
    paths += [folder for folder in folders if folder != "."]
    assert paths and all((ROOT / path).exists() for path in paths), [
        p for p in paths if not (ROOT / p).exists()
    ]


def test_every_command_in_the_workflow_parses():
    parser = build_parser()
    commands = [line for run in _run_lines() for line in run.splitlines() if "flowblending-accel " in line]
    assert len(commands) == 4  # the two gates, and the user-pipeline job's models and gate
    for line in commands:
        parser.parse_args(shlex.split(line.split("flowblending-accel ", 1)[1]))


def _commands_of(job_name):
    workflow = yaml.safe_load(WORKFLOW.read_text())
    job = workflow["jobs"][job_name]
    for step in job["steps"]:
        for line in step.get("run", "").splitlines():
            if line.startswith("flowblending-accel "):
                yield shlex.split(line)[1:]


@pytest.mark.slow
def test_the_user_pipeline_job_passes_as_written(tmp_path, monkeypatch):
    """The example project's config gates its scenarios against the committed expected file."""
    example = ROOT / "integrations" / "github" / "example"
    project = tmp_path / "example"
    shutil.copytree(example, project, ignore=shutil.ignore_patterns("models"))
    monkeypatch.chdir(project)
    codes = [main(argv) for argv in _commands_of("user-pipeline")]
    assert codes == [0, 0]
    assert "lsl-unipc-fbc" in (project / "user-summary.md").read_text()
    assert (project / "expected.csv").read_bytes() == (example / "expected.csv").read_bytes()  # no --update


CPU_TORCH_HERE = "pip install torch==2.13.0"  # this machine's CPU build (the workflow's line pulls from PyPI)


def _job_script(job: dict, venv: Path, checkout: Path) -> str:
    """The job's run steps as one bash script, unchanged but for the torch line, run from ``checkout``."""
    default = job.get("defaults", {}).get("run", {}).get("working-directory", ".")
    lines = ["set -euo pipefail", f". {venv}/bin/activate", "export PIP_DISABLE_PIP_VERSION_CHECK=1"]
    for step in job["steps"]:
        if "run" not in step:
            continue
        folder = checkout / step.get("working-directory", default)
        run = step["run"].replace(
            "pip install torch --index-url https://download.pytorch.org/whl/cpu", CPU_TORCH_HERE
        )
        lines += [f"cd {folder}", run]
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_each_cpu_job_installs_and_passes_as_written_in_a_fresh_venv(tmp_path):
    """A checkout of the tracked files, a fresh venv per job, exactly the job's install and commands."""
    import subprocess
    import sys

    checkout = tmp_path / "checkout"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in tracked.stdout.splitlines():
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, checkout / name)
    workflow = yaml.safe_load(WORKFLOW.read_text())
    for name in ("deterministic", "user-pipeline"):  # the ratio job needs a runner of its own
        venv = tmp_path / f"venv-{name}"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        summary = tmp_path / f"{name}-summary.md"
        done = subprocess.run(
            ["bash", "-c", _job_script(workflow["jobs"][name], venv, checkout)],
            env={  # this machine's pip settings (where the CPU torch lies) pass; the dev venv does not
                **{k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")},
                **workflow["env"],
                "GITHUB_STEP_SUMMARY": str(summary),
            },
            capture_output=True,
            text=True,
            timeout=1200,
        )
        assert done.returncode == 0, f"job {name}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert summary.read_text().strip(), f"job {name} wrote no summary"
