"""Where a measurement ran: device name and library versions, recorded beside every reported number."""

from __future__ import annotations

import platform
from contextlib import AbstractContextManager
from importlib import metadata
from pathlib import Path

# Notes optional libraries log when diffusers imports them, which say nothing about the user's work:
# torchao's prebuilt kernels this machine cannot load and its Triton kernels (CPU-only machines), diffusers'
# note about torchao tensors, torch's deprecation of how torchao registers enums, transformers' fallback to
# its PIL image processors without torchvision. Only these messages are dropped; every other record passes.
IMPORT_NOISE = {
    "torchao": ("Failed to load ",),
    "torchao.kernel.intmm": ("Warning: Detected no triton",),
    "diffusers.quantizers.torchao.torchao_quantizer": ("Unable to import `torchao` Tensor objects",),
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported by torch.compile",),
    "transformers.utils.import_utils": ("requires torchvision (not installed); falling back to",),
}


def quiet_optional_libraries() -> AbstractContextManager[None]:
    """For a program (the command line, a tool's worker, a recipe run as a script), never on import: the
    block in which :data:`IMPORT_NOISE` is dropped (the one silencer, undone on leaving it)."""
    from ..core.patches import silenced

    return silenced(IMPORT_NOISE)


DISTRIBUTION = "flowblending-accel"


def missing_from_extra(extra: str) -> list[str]:
    """The packages of ``pip install flowblending-accel[EXTRA]`` that are not installed, read from this
    package's own metadata (pyproject.toml declares each extra once); none when it runs uninstalled."""
    from packaging.requirements import Requirement

    try:
        declared = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return []
    missing = []
    for line in declared:
        requirement = Requirement(line)
        if not (requirement.marker and requirement.marker.evaluate({"extra": extra})):
            continue
        if requirement.name == DISTRIBUTION:  # an extra made of others: train = [demo] + ...
            missing += [name for other in requirement.extras for name in missing_from_extra(other)]
            continue
        try:
            metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(requirement.name)
    return list(dict.fromkeys(missing))


def require_extra(extra: str, what: str) -> None:
    """Refuse, in one line naming the install, to run ``what`` without the packages of ``extra``."""
    missing = missing_from_extra(extra)
    if missing:
        raise ValueError(
            f"{what} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: "
            f"pip install '{DISTRIBUTION}[{extra}]'."
        )


def device_name(device: str | None = None) -> str:
    import torch

    if (device or "").startswith("cuda") or (device is None and torch.cuda.is_available()):
        return f"GPU: {torch.cuda.get_device_name(torch.device(device or 'cuda'))}"
    return f"CPU: {cpu_model() or platform.processor() or platform.machine()}"


def cpu_model() -> str | None:
    """The CPU's model name as Linux reports it (``None`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


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
