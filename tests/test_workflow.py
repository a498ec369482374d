"""The shipped GitHub workflow installs from the repository, names only files that exist, and every
flowblending-accel command in it parses."""

import re
import shlex
from pathlib import Path

import yaml

from flowblending_accel.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / "integrations" / "github" / "flowblending-check.yml"


def _run_lines():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            if "run" in step:
                yield step["run"].replace("\\\n", " ")


def test_workflow_installs_from_the_repository_not_pypi():
    runs = "\n".join(_run_lines())
    assert (
        'pip install "${FLOWBLENDING_ACCEL}[demo]"' in runs and 'pip install "flowblending-accel' not in runs
    )
    assert yaml.safe_load(WORKFLOW.read_text())["env"]["FLOWBLENDING_ACCEL"] == "."


def test_every_path_the_workflow_names_exists():
    paths = re.findall(r"(?:benchmarks|integrations)/[\w./-]+", "\n".join(_run_lines()))
    assert paths and all((ROOT / path).exists() for path in paths), [
        p for p in paths if not (ROOT / p).exists()
    ]


def test_every_command_in_the_workflow_parses():
    parser = build_parser()
    commands = [line for run in _run_lines() for line in run.splitlines() if "flowblending-accel " in line]
    assert len(commands) == 2
    for line in commands:
        parser.parse_args(shlex.split(line.split("flowblending-accel ", 1)[1]))
