"""Stopping a long run on SIGTERM within a stated bound: what schedulers send before they preempt a job or end
it at its time limit (SLURM, Kubernetes, a cloud's spot reclaim), and what ``torchrun`` forwards to its
workers.

On SIGTERM the work in flight may finish if it does within ``STOP_GRACE_SECONDS`` (20 s; the environment
variable ``FLOWBLENDING_STOP_GRACE`` sets another); past that it is abandoned (an exception raised inside it,
so every ``with`` block on the way out undoes what it did). The caller checks :attr:`StopRequest.requested`
between units of work and raises :class:`Interrupted`. Python acts on a signal between two of its own
operations, so the bound is the grace plus the longest single torch operation in flight. Schedulers wait 30 s
by default between SIGTERM and SIGKILL (SLURM's ``KillWait``, Kubernetes' grace period, torchrun's
``--shutdown_timeout``): the default leaves 10 s to flush and exit.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

STOP_GRACE_SECONDS = 20.0
EXIT_INTERRUPTED = 143  # 128 + SIGTERM: what a shell reports for a process ended by SIGTERM


class Interrupted(Exception):
    """SIGTERM stopped the run; its message says how to resume."""


class StopRequest:
    """Whether SIGTERM asked the run to stop; past the grace, the work in flight is abandoned."""

    def __init__(self, grace: float) -> None:
        self.grace, self.requested_at, self.expired = grace, None, False
        self._timer: threading.Timer | None = None

    @property
    def requested(self) -> bool:
        return self.requested_at is not None

    def finished_in_time(self) -> None:
        """The work in flight finished inside the grace: it is not to be abandoned any more."""
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        # A real signal to the main thread, so a blocking system call there returns (EINTR) and the handler
        # runs now; SIGALRM is left to others (pytest-timeout, the caller's own alarms).
        self.expired = True
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)

    def on_sigterm(self, _signum=None, _frame=None) -> None:
        if self.expired:
            raise Interrupted(f"the call in flight did not finish within {self.grace:g} s of SIGTERM")
        if self.requested_at is None:
            self.requested_at = time.monotonic()
            self._timer = threading.Timer(self.grace, self._expire)
            self._timer.daemon = True
            self._timer.start()


def grace_seconds() -> float:
    text = os.environ.get("FLOWBLENDING_STOP_GRACE")
    if text is None:
        return STOP_GRACE_SECONDS
    try:
        return max(0.0, float(text))
    except ValueError:
        raise ValueError(f"FLOWBLENDING_STOP_GRACE={text!r}: give seconds, e.g. 20.") from None


@contextmanager
def stop_on_sigterm(grace: float | None = None) -> Iterator[StopRequest]:
    """Inside the block, SIGTERM sets the request and abandons the work in flight after ``grace`` seconds;
    the previous handler comes back when it ends. Outside the main thread (where Python takes no signals)
    the request is never set."""
    request = StopRequest(grace_seconds() if grace is None else grace)
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = signal.signal(signal.SIGTERM, request.on_sigterm)
    try:
        yield request
    finally:
        request.finished_in_time()
        signal.signal(signal.SIGTERM, previous)
