"""What keeps a section process honest about time: the deadline and what a run is expected to take, the
progress line the part runner keeps, and the faults a rehearsal injects to check that hangs, crashes,
out-of-memory errors and a spent time box are recorded."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass


class Progress:
    """The row in hand and one line per step on stdout, which the part runner keeps (the last line goes
    into a failure record)."""

    def __init__(self, section: str) -> None:
        self.section, self.row = section, None

    def say(self, text: str, row: str | None = None) -> None:
        self.row = row
        suffix = f", row '{row}': running" if row else ""
        print(f"[{self.section}] {text}{suffix}", flush=True)


@dataclass
class Clock:
    """The section's deadline, and how long the next run of a row is expected to take."""

    deadline: float
    measured: float = 0.0  # seconds of the runs timed so far ...
    estimated: float = 0.0  # ... and what the cost model said they would take

    def left(self) -> float:
        return self.deadline - time.time()

    def scale(self) -> float:
        return self.measured / self.estimated if self.estimated > 0 else 1.0

    def record(self, seconds: float, estimate: float) -> None:
        self.measured, self.estimated = self.measured + seconds, self.estimated + estimate

    def fits(self, expected: float) -> bool:
        return expected <= self.left()


def _faults() -> list[tuple[str, str]]:
    """``FLOWBLENDING_SUITE_FAULT`` as (kind, where) pairs."""
    found = os.environ.get("FLOWBLENDING_SUITE_FAULT", "").split(";")
    return [(kind, where) for kind, _, where in (fault.partition(":") for fault in filter(None, found))]


def fault_deadline(section: str, deadline: float) -> float:
    """``deadline``, or the present under the rehearsal's ``late:<section>``: the section then finds its
    box spent before its first row, as one does whose start-up and build took the whole box."""
    return time.time() if ("late", section) in _faults() else deadline


def inject_fault(progress: Progress, row: str) -> None:
    """The rehearsal's injected faults: ``FLOWBLENDING_SUITE_FAULT=KIND:<section>/<row label>[;...]`` with
    KIND ``hang``, ``crash`` (the process dies of SIGKILL, as the kernel's OOM killer does) or ``oom`` (a
    CUDA out-of-memory error), as the section reaches that row: before its time check, so a busy machine
    that leaves no time for the row cannot skip the fault."""
    for kind, where in _faults():
        if where != f"{progress.section}/{row}" or kind not in ("hang", "crash", "oom"):
            continue
        progress.say(f"injected {kind}", row=row)  # the part runner names the row in hand from this line
        if kind == "hang":
            while True:
                time.sleep(60)
        if kind == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "oom":
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
