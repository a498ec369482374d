"""Writing results without losing any: atomic file writes and report folders that never overwrite silently."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# A size and step count that work for a pipeline folder's models, as call arguments (``tiny --save`` writes
# it): the tools' default when no size is given. A folder without one runs at its pipeline's own defaults.
DEFAULTS_FILE = "flowblending_defaults.json"
SIZE_ARGUMENTS = ("height", "width", "num_frames", "num_inference_steps")


def folder_defaults(folder: str | Path) -> dict[str, int]:
    """The call arguments a pipeline folder's ``flowblending_defaults.json`` records (none: ``{}``)."""
    path = Path(folder) / DEFAULTS_FILE
    if not path.is_file():
        return {}
    recorded = json.loads(path.read_text())
    return {name: int(recorded[name]) for name in SIZE_ARGUMENTS if name in recorded}


def write_folder_defaults(folder: str | Path, call: dict[str, Any]) -> None:
    recorded = {name: call[name] for name in SIZE_ARGUMENTS if name in call}
    write_atomic(Path(folder) / DEFAULTS_FILE, (json.dumps(recorded, indent=2) + "\n").encode())


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
    """Fail before any work when ``path`` cannot become a results folder: it, or a parent, is a file, or it
    cannot be created (proven by creating it, and the folders made for that, then removing them again)."""
    for candidate in [path, *path.parents]:
        if candidate.exists():
            if not candidate.is_dir():
                where = "it" if candidate == path else str(candidate)
                raise ValueError(
                    f"{option} {path}: {where} is a file, not a folder; choose another {option}."
                )
            if not os.access(candidate, os.W_OK | os.X_OK):
                raise ValueError(f"{option} {path}: {candidate} is not writable; choose another {option}.")
            break
    missing = [folder for folder in [path, *path.parents] if not folder.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ValueError(f"{option} {path}: cannot create it ({reason}); choose another {option}.") from None
    for folder in missing:  # innermost first: only what this check made goes
        folder.rmdir()


def json_lines(path: Path, schema: str) -> Iterator[dict[str, Any]]:
    """Every whole JSON-object line of ``path`` that carries ``schema``: a line torn by a kill mid-write, or
    another writer's, is skipped (append-only journals are read this way)."""
    with open(path, encoding="utf-8", errors="replace") as stream:
        for text in stream:
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(line, dict) and line.get("schema") == schema:
                yield line


def append_line(path: Path, data: bytes) -> None:
    """Append one whole line durably: one ``write()`` on an ``O_APPEND`` descriptor, then ``fsync``, so a kill
    leaves whole lines (or one torn last line, which :func:`json_lines` skips) and a machine that stops keeps
    what was written."""
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
