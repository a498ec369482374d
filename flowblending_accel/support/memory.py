"""How much memory there is, and how much a stretch of work peaked at: host (resident set) and CUDA.

Host peaks come from the kernel's high-water mark of this process's resident set (``VmHWM``), which
``reset_host_peak`` puts back to the current size (``/proc/self/clear_refs``), so each measured stretch
gets its own peak. Where the kernel does not allow the reset, the peak is the process's since it started
(``getrusage``), and says so.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB)?\s*$", re.IGNORECASE)
_UNITS = {
    "b": 1,
    "kb": 10**3,
    "kib": 2**10,
    "mb": 10**6,
    "mib": 2**20,
    "gb": 10**9,
    "gib": 2**30,
    "tb": 10**12,
    "tib": 2**40,
}


def parse_size(text: str, option: str = "--gpu-memory") -> int:
    """``"24GiB"``, ``"80GB"``, ``"512MiB"`` or a byte count, as bytes; a clear error naming ``option``."""
    found = _SIZE.match(str(text))
    if not found:
        raise ValueError(f"{option} {text!r} is not a size; write it like 24GiB, 80GB or 512MiB.")
    number, unit = float(found.group(1)), (found.group(2) or "b").lower()
    if number <= 0:
        raise ValueError(f"{option} {text!r} must be more than zero.")
    return int(number * _UNITS[unit])


def gib(value: float | None) -> str:
    """Bytes in GiB, or in MiB / KiB when smaller (tiny test models)."""
    if value is None:
        return "—"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if abs(value) >= size / 10:
            return f"{value / size:.2f} {unit}"
    return f"{value / 2**10:.1f} KiB"


def host_total_bytes() -> int | None:
    """Physical memory of this machine (``None`` where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def reset_host_peak() -> bool:
    """Start a new host peak from the current resident set; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def host_peak_bytes() -> int | None:
    """The resident set's high-water mark since the last :func:`reset_host_peak` (or since start)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except (ImportError, OSError):
        return None


def device_total_bytes(device: str) -> int | None:
    """Memory of a CUDA device (``None`` for a CPU: its memory is the host's)."""
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_properties(torch.device(device)).total_memory
