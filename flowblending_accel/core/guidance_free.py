"""The guidance-free small stage (``small_guidance="off"``), an interceptor like any other listener.

For a step- or guidance-distilled small model in a pipeline that makes one denoiser call per CFG branch,
conditional first (Wan): the unconditional call of a small step is answered with the conditional call's
output, so ``uncond + g * (cond - uncond)`` is exactly ``cond`` and half the small calls are never made.
An answered call is not a denoiser call: the run's stats count it in ``skipped_uncond_calls`` only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .listeners import CallEvent, RouterListener

if TYPE_CHECKING:
    from .session import RunSession


class GuidanceFreeSmallStage(RouterListener):
    """Keeps the last small call's output by ``(step, iteration)``; the next small call of the same step and
    iteration (the unconditional branch) gets it back without running."""

    def __init__(self) -> None:
        self._last: tuple[tuple[int, int | None], Any] | None = None

    def on_run_start(self, router: Any, session: RunSession) -> None:
        self._last = None

    def on_call(self, router: Any, call: CallEvent) -> None:
        record = call.record
        if record.model == "small":
            self._last = ((record.step, record.iteration), call.output)

    def intercept(
        self, router: Any, session: RunSession, model: str, step: int, iteration: int | None
    ) -> Any:
        if model != "small" or self._last is None or self._last[0] != (step, iteration):
            return None
        session.stats.skipped_uncond_calls += 1
        return self._last[1]
