"""The demo's speed figures: interleaved, time-boxed rounds, median and a 95 % interval, and a warning.

Generation for the quality figures runs in chunks, too few to time (four chunks made the LSL speedup swing
from 0.79x to 1.57x between two runs on one machine). So after generating, every schedule is timed again on
the same few clips in rounds, order rotated round by round, for ``timing_seconds`` (at least
:data:`MIN_ROUNDS` rounds). A schedule's speedup is the median over rounds of LLL's time over its time in
the same round, with a bootstrap 95 % interval of that median. The figure is flagged as unreliable when its
interval includes 1.0x or when other processes used the machine while it was timed.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from ..support.cpu_load import OtherLoad

MIN_ROUNDS, MAX_ROUNDS, BOOTSTRAP = 5, 200, 2000


@dataclass
class Timing:
    """Seconds per schedule, one entry per round, all rounds complete."""

    clips: int
    seconds: dict[str, list[float]] = field(default_factory=dict)
    other_load: float | None = None
    busy: bool = False

    @property
    def rounds(self) -> int:
        return min((len(values) for values in self.seconds.values()), default=0)

    def speedup(self, name: str, reference: str = "LLL") -> dict[str, Any]:
        ratios = [b / s for b, s in zip(self.seconds[reference], self.seconds[name], strict=False)]
        low, high = _median_interval(ratios)
        unreliable = self.busy or (name != reference and low <= 1.0 <= high)
        return {
            "median": statistics.median(ratios),
            "low": low,
            "high": high,
            "rounds": len(ratios),
            "clips_per_round": self.clips,
            "reliable": not unreliable,
        }


def _median_interval(values: list[float], seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95 % interval of the median (percentile method, seeded)."""
    if len(values) < 2:
        return values[0], values[0]
    generator = random.Random(seed)
    medians = sorted(statistics.median(generator.choices(values, k=len(values))) for _ in range(BOOTSTRAP))
    return medians[int(0.025 * BOOTSTRAP)], medians[int(0.975 * BOOTSTRAP) - 1]


def time_schedules(
    run_schedule, schedules: tuple[str, ...], clips: int, seconds: float, on_round=None
) -> Timing:
    """``run_schedule(name)`` generates the timing clips under one schedule; rounds until ``seconds`` have
    passed (and at least :data:`MIN_ROUNDS`). ``on_round(done)`` hears of each round as it starts. Ctrl-C
    keeps the rounds every schedule finished."""
    timing = Timing(clips, {name: [] for name in schedules})
    started = time.monotonic()
    with OtherLoad() as load:
        try:
            for index in range(MAX_ROUNDS):
                if index >= MIN_ROUNDS and time.monotonic() - started >= seconds:
                    break
                if on_round is not None:
                    on_round(index)
                shift = index % len(schedules)
                for name in schedules[shift:] + schedules[:shift]:
                    begin = time.perf_counter()
                    run_schedule(name)
                    timing.seconds[name].append(time.perf_counter() - begin)
        except KeyboardInterrupt:
            pass
    for name in schedules:
        del timing.seconds[name][timing.rounds :]
    timing.other_load, timing.busy = load.share, load.busy
    return timing
