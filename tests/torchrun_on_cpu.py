"""Launching ranks on this CPU-only machine, for the context-parallel tests.

diffusers places a rank on ``rank % torch.accelerator.device_count()``, which divides by zero on a machine
without an accelerator: the tests say there is one (the CPU); the library never does. Scripts the tests launch
under torchrun import this module from the tests folder (``launch_env`` puts it on their path)."""

import os
import sys
from pathlib import Path

import torch


def provide_device_count() -> None:
    if torch.accelerator.device_count() == 0:
        torch.accelerator.device_count = lambda: 1


def torchrun(processes: int) -> list[str]:
    """The torchrun command for ``processes`` ranks on a free port."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]


def launch_env() -> dict[str, str]:
    """This environment, with the tests folder on the path of the launched scripts."""
    tests = str(Path(__file__).resolve().parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
