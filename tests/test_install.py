"""Every install path works or says what to install: a command whose pipelines need the [demo] extra's
text-encoder stack refuses in one line without it, and the bare wheel in a fresh venv does just that."""

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from flowblending_accel.cli import main
from flowblending_accel.support import env

ROOT = Path(__file__).resolve().parent.parent
IGNORED = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache")
NEEDS_DEMO = {  # each command with the arguments it requires
    "demo": [],
    "bench": [],
    "analyze": ["--output", "o"],
    "calibrate": ["--output", "o"],
    "tune": ["--output", "o"],
    "check": [],
    "tiny": [],
    "train-demo": [],
    "export-demo": ["checkpoint", "folder"],
}


@pytest.fixture
def without_transformers(monkeypatch):
    version = metadata.version

    def installed(name):
        if name == "transformers":
            raise metadata.PackageNotFoundError(name)
        return version(name)

    monkeypatch.setattr(env.metadata, "version", installed)


@pytest.mark.parametrize("command", list(NEEDS_DEMO))
def test_a_command_without_its_extra_names_the_install_in_one_line(command, without_transformers, capsys):
    assert main([command, *NEEDS_DEMO[command]]) == 2
    error = capsys.readouterr().err
    assert error == (
        f"flowblending-accel {command}: error: flowblending-accel {command} needs transformers, which is not "
        "installed: pip install 'flowblending-accel[demo]'.\n"
    )


def test_plan_needs_no_extra_but_its_memory_plan_does(without_transformers, capsys):
    assert main(["plan", "--steps", "4"]) == 0
    assert main(["plan", "--memory", "--large", "a", "--small", "b"]) == 2
    assert "plan --memory needs transformers" in capsys.readouterr().err


def test_an_extra_made_of_others_lists_their_packages(without_transformers):
    assert env.missing_from_extra("train") == ["transformers"]  # train = [demo] + scikit-learn
    assert env.missing_from_extra("demo") == ["transformers"]


@pytest.mark.slow  # builds the wheel and installs it with its dependencies into a fresh venv
def test_the_bare_wheel_in_a_fresh_venv_routes_and_names_the_extra_for_the_demo(tmp_path):
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    run = lambda *command, **kw: subprocess.run(  # noqa: E731
        command, capture_output=True, text=True, timeout=900, **kw
    )
    source = tmp_path / "source"  # a copy: an in-tree build would leave build/ (and stale files) behind
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*IGNORED))
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source))
    assert built.returncode == 0, built.stderr
    assert run(sys.executable, "-m", "venv", str(venv)).returncode == 0
    wheel = next(wheels.glob("flowblending_accel-*.whl"))
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "torch==2.13.0", str(wheel)]
    installed = run(*pip)
    assert installed.returncode == 0, installed.stderr
    demo = run(str(venv / "bin" / "flowblending-accel"), "demo", cwd=tmp_path)
    assert demo.returncode == 2 and demo.stdout == "", demo.stderr
    assert demo.stderr.strip().endswith("pip install 'flowblending-accel[demo]'.")
    assert len(demo.stderr.strip().splitlines()) == 1 and "Traceback" not in demo.stderr
    plan = run(str(venv / "bin" / "flowblending-accel"), "plan", "--steps", "4", cwd=tmp_path)
    assert plan.returncode == 0 and "L40-S40-L20" in plan.stdout, plan.stderr
