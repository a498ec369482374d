"""Where a measurement ran: device name and library versions, recorded beside every reported number."""

from __future__ import annotations

import platform
from pathlib import Path


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
    try:
        import transformers

        found["transformers"] = transformers.__version__
    except ImportError:
        pass
    return found
