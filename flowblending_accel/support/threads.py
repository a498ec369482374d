"""Compute threads that suit the machine: the cores this process may use, less those other processes keep
busy; and, partway through, fewer when the machine turns out to be busy.

Two torch threads on two cores, one of them busy, make every parallel region wait on the busy core: a run
crawls at a fraction of its one-thread speed. So the default counts the cores in this process's affinity
that are idle at the start, and a :class:`ThreadGovernor` watches the other processes' share of the CPU
while the work runs (the progress callbacks tell it when work advances) and lowers the thread count by one
whenever they keep at least one more thread busy than the cores ours leave free. A thread count the user
chose is never changed.
"""

from __future__ import annotations

import os
import time
from typing import Any

from .cpu_load import own_jiffies, system_jiffies

SAMPLE_SECONDS = 0.3  # how long the start-up measurement of the other processes' load takes
CHECK_SECONDS = 5.0  # the governor looks at the load at most this often
BUSY_CORE = 0.75  # other processes using this much of one core count it as busy


def usable_cores() -> int:
    """The cores this process may run on (its affinity), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _others_cores(start: tuple | None, own_start: int | None) -> float | None:
    """Cores' worth of CPU other processes used since ``start`` (system, own jiffies)."""
    end, own_end = system_jiffies(), own_jiffies()
    if None in (start, own_start, end, own_end):
        return None
    busy, total = end[0] - start[0], end[1] - start[1]
    if total <= 0:
        return None
    return max(0.0, (busy - (own_end - own_start)) / total) * (os.cpu_count() or 1)


def others_busy_cores(seconds: float = SAMPLE_SECONDS) -> float:
    """Cores' worth of CPU other processes use now, measured over ``seconds`` (0 where /proc is missing)."""
    start, own = system_jiffies(), own_jiffies()
    time.sleep(seconds)
    return _others_cores(start, own) or 0.0


def default_threads() -> int:
    """The usable cores less those others keep busy, at least one."""
    busy = int(others_busy_cores() // BUSY_CORE)
    return max(1, usable_cores() - busy)


def starved_above(threads: int) -> float:
    """The other processes' CPU use (in cores) above which ``threads`` compute threads are starved.

    Starved: at least ``k = cores - threads + 1`` other threads want a core. Measured while ours run, the
    cores are shared: ``k`` busy threads among ``k + threads`` get ``k * cores / (k + threads)`` cores (a
    spinning process shows as 0.67 cores against two threads on two cores, not 1.0), so that is the mark.
    """
    cores = usable_cores()
    wanted = max(1, cores - threads + 1)
    return BUSY_CORE * wanted * cores / (wanted + threads)


class ThreadGovernor:
    """Lowers torch's thread count when other processes keep cores busy; records each change."""

    def __init__(self, threads: int, chosen: bool) -> None:
        self.start = self.threads = threads
        self.chosen = chosen  # the user gave --threads: watched, never changed
        self.events: list[dict[str, Any]] = []
        self._began = time.monotonic()
        self._mark()

    def _mark(self) -> None:
        self._since, self._system, self._own = time.monotonic(), system_jiffies(), own_jiffies()

    def observe(self, done: float | None = None) -> None:
        if time.monotonic() - self._since < CHECK_SECONDS:
            return
        others = _others_cores(self._system, self._own)
        self._mark()
        if others is None or self.chosen or self.threads <= 1:
            return
        if others >= starved_above(self.threads):
            import torch

            self.threads -= 1
            torch.set_num_threads(self.threads)
            self.events.append(
                {
                    "after_seconds": round(time.monotonic() - self._began, 1),
                    "done": done,
                    "threads": self.threads,
                    "others_cores": round(others, 2),
                }
            )

    def report(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.threads, "chosen": self.chosen, "lowered": self.events}

    def describe(self) -> str:
        """One line for a report: the threads used, and every change with why."""
        text = f"{self.start} torch thread{'s' if self.start != 1 else ''}"
        text += " (--threads)" if self.chosen else f" (of {usable_cores()} usable cores, the idle ones)"
        for event in self.events:
            text += (
                f"; lowered to {event['threads']} after {event['after_seconds']:.0f} s: other processes kept "
                f"{event['others_cores']:.1f} cores busy"
            )
        return text


_active: list[ThreadGovernor] = []  # the command's governor (one command per process; a new one replaces it)


def use_threads(requested: int | None) -> ThreadGovernor:
    """Set torch's threads for a command: ``requested`` (``--threads``), else :func:`default_threads`; the
    returned governor watches the run from now on (and lowers an automatic count)."""
    import torch

    threads = requested if requested is not None else default_threads()
    torch.set_num_threads(threads)
    governor = ThreadGovernor(threads, chosen=requested is not None)
    _active[:] = [governor]
    return governor


def observe(done: float | None = None) -> None:
    """Called as work advances (the progress helpers do): the command's governor may act."""
    if _active:
        _active[-1].observe(done)
