"""Writing results without losing any: atomic file writes and report folders that never overwrite silently."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, then rename it over ``path`` (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "wb") as stream:
        stream.write(data)
    os.replace(temporary, path)


def free_output_folder(path: Path, overwrite: bool, marker: str = "report.md") -> Path:
    """``path`` itself, or (when it already holds ``marker`` and ``overwrite`` is off) the next ``path-N``."""
    if overwrite or not (path / marker).exists():
        return path
    n = 2
    while (path.parent / f"{path.name}-{n}" / marker).exists():
        n += 1
    return path.parent / f"{path.name}-{n}"
