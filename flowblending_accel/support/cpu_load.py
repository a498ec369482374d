"""Was the machine busy while we timed? The share of all CPU time that *other* processes used.

Speed ratios measured in one process are robust to a steady load, not to one that comes and goes while the
rounds run; a timing report says when others were using the machine. Linux only (``/proc``); elsewhere the
share is unknown (``None``).
"""

from __future__ import annotations

import os
from pathlib import Path

BUSY_SHARE = 0.25  # others used more than a quarter of the machine: the timing is suspect


def system_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU jiffies of the whole machine since boot."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def own_jiffies() -> int | None:
    """User + system jiffies of this process (all its threads)."""
    try:
        fields = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])  # utime, stime


class OtherLoad:
    """``with OtherLoad() as load: ...`` then ``load.share``: other processes' share of all CPU time."""

    share: float | None = None

    def __enter__(self) -> OtherLoad:
        self._system, self._own = system_jiffies(), own_jiffies()
        return self

    def __exit__(self, *exc) -> None:
        system, own = system_jiffies(), own_jiffies()
        if None in (system, own, self._system, self._own):
            return
        busy, total = system[0] - self._system[0], system[1] - self._system[1]
        if total > 0:
            self.share = max(0.0, (busy - (own - self._own)) / total)

    @property
    def busy(self) -> bool:
        return self.share is not None and self.share > BUSY_SHARE
