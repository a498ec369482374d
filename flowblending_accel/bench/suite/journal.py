"""The suite's part files: one JSON line per event, appended and flushed as it happens, so a part stopped at
any point (SIGTERM, SIGKILL, a machine that stops answering once the files came back) keeps every line
written before.

Every line stands alone: the suite, part and section, the run (one section process), the time, the setup
(device, versions, dtype, workload) and its fingerprint, then what the line says (``kind``):

* ``section``: a section process started (its rows, the time box, the estimate);
* ``warmup``: a row's untimed first run (compile, quantize, every CFG branch);
* ``flops``: one counted call per model;
* ``sample``: one timed run of one row (times, calls, FLOPs, memory, counters, recompiles);
* ``pair``: one unwrapped and one routed run (the smoke test), ``overhead``: the router's own cost;
* ``skipped`` / ``failed`` / ``interrupted``: a row, the pairs (``pairs`` of ``planned``) or a section that
  was not (fully) measured, and why;
* ``section_end``: how a section process ended (``status``: ``done``, ``cut short`` when it timed nothing,
  ``skipped`` when its baseline cannot run there; with a ``reason``); ``part`` and ``part_end``: bookkeeping.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ...support.files import append_line, json_lines
from .plan import Section, Suite

SCHEMA = "flowblending-accel/suite-line/v1"
FINISHED = ("section_end", "failed", "interrupted")  # a section process wrote its last line


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def section_setup(suite: Suite, section: Section) -> dict[str, Any]:
    """What a section's lines are measured on: the device and its details, versions, dtype, workload."""
    from ...support.env import accelerator_details, versions
    from ...support.memory import host_total_bytes

    details = accelerator_details(suite.device)
    return {
        "suite": suite.name,
        "device": details["device"],
        "details": details,
        "versions": versions(),
        "dtype": suite.dtype,
        "workload": asdict(section.workload),
        "host_memory_bytes": host_total_bytes(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }


def fingerprint(setup: dict[str, Any]) -> str:
    """Lines with equal fingerprints were measured on the same device, versions, dtype and sizes."""
    keys = ("suite", "device", "versions", "dtype", "workload")
    text = json.dumps({key: setup.get(key) for key in keys}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Journal:
    """Appends lines to one part file; ``base`` goes into every line."""

    def __init__(self, path: Path, **base: Any) -> None:
        self.path, self.base = Path(path), base
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, kind: str, **fields: Any) -> dict[str, Any]:
        line = {"schema": SCHEMA, "kind": kind, "time": now(), **self.base, **fields}
        append_line(self.path, (json.dumps(line, default=str) + "\n").encode())
        return line

    def this_run(self) -> list[dict[str, Any]]:
        """The lines of this journal's run (one section process), read back: what the summary will see."""
        return [line for line in read_lines([self.path]) if line.get("run") == self.base.get("run")]


def part_files(paths: Iterable[Path]) -> list[Path]:
    """The ``*.jsonl`` files named, or inside the folders named (not recursing), in order."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(path.glob("*.jsonl"))
        elif path.is_file():
            found.append(path)
        else:
            raise ValueError(f"{path}: no such file or folder of part files (*.jsonl).")
    return found


def read_lines(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """Every whole line of every part file (``_file`` says which); a torn or foreign line is skipped."""
    for path in part_files(paths):
        for line in json_lines(path, SCHEMA):
            yield {**line, "_file": str(path)}


def rows_measured(lines: Iterable[dict[str, Any]], section: str, print_: str, repeats: int) -> set[str]:
    """Labels of rows with ``repeats`` timed samples in one run of ``section`` under fingerprint ``print_``:
    what a resumed part need not measure again."""
    counts: dict[tuple[str, str], int] = {}
    for line in lines:
        if line["kind"] == "sample" and line.get("section") == section and line.get("fingerprint") == print_:
            key = (line["run"], line["row"])
            counts[key] = counts.get(key, 0) + 1
    return {row for (_, row), count in counts.items() if count >= repeats}


def section_finished(lines: Iterable[dict[str, Any]], section: str, print_: str) -> bool:
    """A run of ``section`` under fingerprint ``print_`` ended done."""
    return any(
        line["kind"] == "section_end"
        and line.get("status") == "done"
        and line.get("section") == section
        and line.get("fingerprint") == print_
        for line in lines
    )


def first_not_measured(lines: Iterable[dict[str, Any]]) -> str:
    """The first row (or the pairs) that ``lines`` say was skipped or failed, and why (the cause of the rest,
    as a rule): what a section that ends cut short cites."""
    for line in lines:
        if line["kind"] in ("skipped", "failed"):
            what = line.get("row") or "the pairs"
            return f" (first not measured: {what}, {line['kind']}: {line['reason']})"
    return ""
