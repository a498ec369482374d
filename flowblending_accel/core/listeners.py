"""What a router tells the objects that follow a run: accelerators, meters, probes, guards.

Subclass :class:`RouterListener`, override the events you need, and ``router.add_listener(listener)``:

* ``on_run_start(router, session)``: a run begins; ``session.plan`` is its model table;
* ``on_segment_start(router, segment)``: the first call of a segment (a maximal run of one model's steps),
  after the router reset the cache state of the model it switches to;
* ``on_call(router, call)``: after every denoiser call, with its record, arguments and output;
* ``on_run_end(router, stats)``: the run finished or was aborted (``stats.aborted``, ``stats.error``).

Listeners run on the sampling loop's thread, between denoiser calls: keep them cheap, and never sync a
device inside ``on_call`` unless measuring is the point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .session import RunSession
    from .stats import CallRecord, RunStats


@dataclass(frozen=True)
class SegmentStart:
    """A segment begins: ``model`` runs solver steps ``first_step`` .. ``last_step`` of the run's plan.

    ``after_switch`` is False for the run's first segment, True when the other model ran just before.
    """

    model: str
    step: int
    first_step: int
    last_step: int
    after_switch: bool

    @property
    def length(self) -> int:
        return self.last_step - self.first_step + 1


@dataclass(frozen=True)
class CallEvent:
    """One finished denoiser call: what was recorded, what it was given and what it returned."""

    record: CallRecord
    args: tuple
    kwargs: dict[str, Any]
    output: Any


class RouterListener:
    """Base class of everything a :class:`~.router.ModelRouter` notifies (no-op events).

    ``manages_placement``: the listener moves the models between devices itself (the offload memory mode),
    so the router does not make the small model follow the large one's device.
    """

    manages_placement = False

    def on_run_start(self, router: Any, session: RunSession) -> None:
        """A run begins (both models' caches were just reset)."""

    def on_segment_start(self, router: Any, segment: SegmentStart) -> None:
        """The first call of a segment is about to run."""

    def on_call(self, router: Any, call: CallEvent) -> None:
        """A denoiser call finished."""

    def answer(self, router: Any, record: Any, args: tuple, kwargs: dict) -> Any:
        """The output to use for this call instead of running the model (a call replayed from an earlier,
        identical run), or ``None`` to run it. ``record`` is the call's :class:`~.stats.CallRecord`."""
        return None

    def intercept(
        self, router: Any, session: RunSession, model: str, step: int, iteration: int | None
    ) -> Any:
        """The output to return for this call without making it or recording it as a call (the guidance-free
        small stage's unconditional branch), or ``None`` to go on. Asked before :meth:`answer`."""
        return None

    def on_run_end(self, router: Any, stats: RunStats) -> None:
        """The run ended (finished, or aborted by an exception or an interrupted loop)."""


def listens_to_calls(listener: RouterListener) -> bool:
    """Whether ``listener`` overrides ``on_call`` (the router skips building call events otherwise)."""
    return type(listener).on_call is not RouterListener.on_call


def answers_calls(listener: RouterListener) -> bool:
    """Whether ``listener`` overrides ``answer`` (the router asks none otherwise)."""
    return type(listener).answer is not RouterListener.answer


def intercepts_calls(listener: RouterListener) -> bool:
    """Whether ``listener`` overrides ``intercept`` (the router asks none otherwise)."""
    return type(listener).intercept is not RouterListener.intercept
