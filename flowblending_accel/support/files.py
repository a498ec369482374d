"""Writing results without losing any: atomic file writes and report folders that never overwrite silently."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def default_file_mode() -> int:
    """The mode ``open()`` would give a new file: 0o666 less the process umask (0o644 under the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to a temporary sibling, then rename it over ``path`` (readers never see half a file).

    The file gets ``mode`` (default: what ``open()`` would give, so others can read results); a temporary
    file's private 0o600 would otherwise survive the rename.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, default_file_mode() if mode is None else mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def free_output_folder(path: Path, overwrite: bool, marker: str = "report.md") -> Path:
    """``path`` itself, or (when it already holds ``marker`` and ``overwrite`` is off) the next ``path-N``."""
    if overwrite or not (path / marker).exists():
        return path
    n = 2
    while (path.parent / f"{path.name}-{n}" / marker).exists():
        n += 1
    return path.parent / f"{path.name}-{n}"


def check_output_folder(path: Path, option: str = "--output") -> None:
    """Fail before any work when ``path`` cannot become a results folder: it, or a parent, is a file, or the
    nearest existing parent is not writable."""
    for candidate in [path, *path.parents]:
        if candidate.exists():
            if not candidate.is_dir():
                where = "it" if candidate == path else str(candidate)
                raise ValueError(
                    f"{option} {path}: {where} is a file, not a folder; choose another {option}."
                )
            if not os.access(candidate, os.W_OK | os.X_OK):
                raise ValueError(f"{option} {path}: {candidate} is not writable; choose another {option}.")
            return
