"""The router as a k-diffusion style denoiser: ``model(x, sigma, **kwargs)``, no diffusers pipeline needed."""

from __future__ import annotations

from typing import Any

import torch

from .plan import Plan
from .step_grid import SolverView


class RoutedDenoiser:
    """Calls the router's large or small model (both ``model(x, sigma, **kw)``) by solver step.

    Calls are counted: call ``c`` is loop iteration ``c // calls_per_iteration``, and its ``sigma`` must be
    the one the sampler's grid has there (a mismatch raises instead of silently misrouting). A call at the
    grid's first sigma after the first call starts a new run; :meth:`reset` starts one explicitly. Runs are
    driven through the router's public run control, so listeners, stats and cache resets work as with a
    pipeline.
    """

    def __init__(
        self,
        router: Any,
        sigmas: Any,
        *,
        order: int = 1,
        calls_per_iteration: int = 1,
        sigma_kind: str = "flow",
    ) -> None:
        if router.large is None or not callable(router.large):
            raise ValueError(
                "as_denoiser needs a large denoiser: build ModelRouter(small, schedule, large=large)."
            )
        if calls_per_iteration < 1:
            raise ValueError(f"calls_per_iteration={calls_per_iteration} must be at least 1.")
        self.router = router
        self.view = SolverView.from_sigmas(sigmas, order=order, sigma_kind=sigma_kind)
        self.plan = Plan.build(router.schedule, self.view)
        self.calls_per_iteration = calls_per_iteration
        self._calls = 0

    def reset(self) -> None:
        """End the current run (if any); the next call starts a fresh one with both caches reset."""
        self.router.end_run()
        self._calls = 0

    def __call__(self, x: torch.Tensor, sigma: Any, **kwargs: Any) -> Any:
        value = float(sigma.max()) if isinstance(sigma, torch.Tensor) else float(sigma)
        if (
            self._calls
            and (self._calls >= self._capacity() or not self._matches(value))
            and self._is_start(value)
        ):
            self.reset()
        if self._calls == 0:
            self.router.start_run(self.plan)
        iteration = self._calls // self.calls_per_iteration
        if iteration >= len(self.view.sigmas) or not self._matches(value):
            expected = (
                f"{self.view.sigmas[iteration]:g}"
                if iteration < len(self.view.sigmas)
                else "none (grid exhausted)"
            )
            raise ValueError(
                f"call {self._calls} got sigma={value:g} but the sampler grid expects {expected} at "
                f"iteration {iteration}: pass the sampler's own sigmas, its order (2 for Heun) and "
                "calls_per_iteration."
            )
        step = self.view.step_of_iteration[iteration]
        model = self.router.enter_step(step)
        self._calls += 1
        return self.router.call(model, step, iteration, (x, sigma), kwargs)

    def _capacity(self) -> int:
        return len(self.view.sigmas) * self.calls_per_iteration

    def _matches(self, value: float) -> bool:
        iteration = self._calls // self.calls_per_iteration
        if iteration >= len(self.view.sigmas):
            return False
        expected = self.view.sigmas[iteration]
        return abs(value - expected) <= 1e-4 * max(1.0, abs(expected))

    def _is_start(self, value: float) -> bool:
        return abs(value - self.view.sigmas[0]) <= 1e-4 * max(1.0, abs(self.view.sigmas[0]))
