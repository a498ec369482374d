"""Where a measurement ran: device name and library versions, recorded beside every reported number."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path


def quiet_optional_libraries() -> None:
    """For a command line program (never done on import): transformers' notes about optional image
    backends, which it prints whenever diffusers imports its pipelines, say nothing about the work. (The
    package drops the import notices of torchao and torch itself, in ``flowblending_accel/__init__.py``.)"""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def device_name(device: str | None = None) -> str:
    import torch

    if (device or "").startswith("cuda") or (device is None and torch.cuda.is_available()):
        return f"GPU: {torch.cuda.get_device_name(torch.device(device or 'cuda'))}"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()}"


def versions() -> dict[str, str]:
    import diffusers
    import torch

    from .. import __version__

    found = {
        "flowblending_accel": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
    }
    for distribution in ("transformers", "torchao", "torch-tensorrt"):  # read without importing them
        try:
            found[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return found


def accelerator_details(device: str) -> dict[str, object]:
    """For a CUDA device: its name, compute capability, memory, the CUDA runtime torch was built with and the
    driver version (from nvidia-smi, when it is there); for a CPU, its name."""
    import torch

    if not device.startswith("cuda"):
        return {"device": device_name(device)}
    index = torch.device(device).index or 0
    properties = torch.cuda.get_device_properties(index)
    return {
        "device": device_name(device),
        "compute_capability": f"{properties.major}.{properties.minor}",
        "memory_gib": round(properties.total_memory / 2**30, 1),
        "cuda_runtime": torch.version.cuda,
        "driver": _driver_version(index),
    }


def _driver_version(index: int) -> str | None:
    import subprocess

    try:
        answer = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", f"--id={index}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return answer.stdout.strip() or None
