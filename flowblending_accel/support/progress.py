"""Progress on long work that a person at a terminal and a CI log can both read.

At a terminal: a rich progress bar. Elsewhere (a pipe, a CI log, where a bar would show nothing until the
end): one plain line on stderr at the start, at every tenth of the work and at least every 30 seconds, and
at the end, each with the count and the elapsed time.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from . import threads

PLAIN_INTERVAL_SECONDS = 30.0


class _PlainLines:
    def __init__(self, description: str, total: int | None, stream) -> None:
        self.description, self.total, self.stream = description, total, stream
        self.done, self.start = 0, time.monotonic()
        self.last_line, self.last_tenth = self.start, 0
        self._print()

    def advance(self, amount: float = 1) -> None:
        self.done += amount
        now = time.monotonic()
        tenth = int(10 * self.done / self.total) if self.total else 0
        if tenth > self.last_tenth or now - self.last_line >= PLAIN_INTERVAL_SECONDS:
            self.last_tenth, self.last_line = tenth, now
            self._print()

    def note(self, text: str) -> None:
        """What the work is doing now, between counted steps (a warm-up, a compile, timing rounds)."""
        self.last_line = time.monotonic()
        self._print(text)

    def _print(self, note: str | None = None) -> None:
        elapsed = time.monotonic() - self.start
        count = f"{self.done:g}/{self.total}" if self.total else f"{self.done:g}"
        now = f" — {note}" if note else ""
        print(f"{self.description}: {count} ({elapsed:.0f} s){now}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.total is None or self.done < self.total or self.last_tenth < 10:
            self._print()


@contextmanager
def progress(description: str, total: int | None, enabled: bool = True, stream=None) -> Iterator[Callable]:
    """``with progress("benchmarking rows", 20) as advance: ... advance(1)``; ``total=None`` when unknown;
    ``advance.note("warm-up: +compile")`` says what runs between counted steps. Each advance also lets the
    command's thread governor look at the machine's load."""
    done = [0.0]

    def watched(show: Callable, note: Callable[[str], None]) -> Callable:
        def advance(amount: float = 1) -> None:
            show(amount)
            done[0] += amount
            threads.observe(done[0])

        advance.note = note
        return advance

    stream = stream or sys.stderr
    if not enabled:
        yield watched(lambda amount=1: None, lambda text: None)
        return
    if stream.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        with Progress(
            "{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(file=stream),
        ) as bar:
            task = bar.add_task(description, total=total)
            yield watched(
                lambda amount=1: bar.advance(task, amount),
                lambda text: bar.update(task, description=f"{description} — {text}"),
            )
        return
    lines = _PlainLines(description, total, stream)
    try:
        yield watched(lines.advance, lines.note)
    finally:
        lines.close()


@contextmanager
def quiet_library_bars() -> Iterator[None]:
    """No per-component bars from diffusers and transformers while loading or saving models (a tool shows its
    own progress; theirs would interleave with it)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    shown = [m for m in (diffusers_logging, transformers_logging) if m.is_progress_bar_enabled()]
    for module in shown:
        module.disable_progress_bar()
    try:
        yield
    finally:
        for module in shown:
            module.enable_progress_bar()
