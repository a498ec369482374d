"""What a diffusers scheduler's step grid looks like to a router: loop iterations, solver steps and noise.

A pipeline's denoising loop iterates over ``scheduler.timesteps``. That is not always one iteration per
solver step: second-order schedulers (Heun, KDPM2; ``scheduler.order == 2``) run a predictor and a corrector
per step over ``2N - 1`` iterations, and PNDM repeats a timestep for its warm-up. The router must decide once
per *solver* step, so this module maps every loop iteration to its solver step, and every step to the noise
level the model is evaluated at:

* flow-matching schedulers (``FlowMatch*``, UniPC / DPM++ with ``use_flow_sigmas``): ``noise = sigma``, read
  from ``scheduler.sigmas`` (``t / 1000`` is off by up to 1e-3 and int-truncated for UniPC / DPM++);
* VP schedulers (DDIM, Euler, DPM++, UniPC with epsilon / v prediction): ``sigma`` is the VP sigma
  ``sqrt((1 - alpha_bar) / alpha_bar)`` (from ``scheduler.sigmas`` or ``alphas_cumprod``) and the
  SNR-equivalent flow noise level is ``sigma / (1 + sigma)``.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class SolverView:
    """Per loop iteration: timestep, native sigma, noise level in [0, 1] and solver step."""

    timesteps: tuple[float, ...]
    sigmas: tuple[float, ...]
    noise: tuple[float, ...]
    step_of_iteration: tuple[int, ...]
    order: int
    kind: str  # "flow" or "vp"
    scheduler_name: str
    num_train_timesteps: int = 1000

    @property
    def num_steps(self) -> int:
        return self.step_of_iteration[-1] + 1 if self.step_of_iteration else 0

    def first_iteration(self, step: int) -> int:
        return self._first_iterations[step]

    @functools.cached_property
    def _first_iterations(self) -> dict[int, int]:
        first: dict[int, int] = {}
        for iteration, step in enumerate(self.step_of_iteration):
            first.setdefault(step, iteration)
        return first

    def step_timestep(self, step: int) -> float:
        return self.timesteps[self.first_iteration(step)]

    def step_sigma(self, step: int) -> float:
        return self.sigmas[self.first_iteration(step)]

    def step_noise(self, step: int) -> float:
        return self.noise[self.first_iteration(step)]

    def first_step_of(self, scheduler: Any) -> int:
        """The solver step a run on ``scheduler`` starts at: img2img / video2video pipelines start part-way
        down the grid and say so with ``set_begin_index``. (A router on Wan 2.2's second expert first sees a
        later step, but the run itself still starts at 0.)"""
        begin = getattr(scheduler, "begin_index", None)
        return (
            self.step_of_iteration[begin] if begin is not None and begin < len(self.step_of_iteration) else 0
        )

    def step_of_call(self, scheduler: Any, timestep: Callable[[], float]) -> int:
        """The solver step of a denoiser call on ``scheduler``'s loop: ``scheduler.step_index`` (exact, no
        device sync), else ``begin_index`` on the first iteration, else ``timestep()`` (the call's timestep
        argument, read only then) matched against the grid."""
        iteration = getattr(scheduler, "step_index", None)
        if iteration is None and hasattr(scheduler, "step_index"):
            iteration = getattr(scheduler, "begin_index", None)
        if iteration is not None:
            if iteration >= len(self.step_of_iteration):
                raise RuntimeError(
                    f"scheduler.step_index={iteration} is past its {len(self.timesteps)} timesteps."
                )
            return self.step_of_iteration[iteration]
        return self.step_for_timestep(timestep())

    def step_for_timestep(self, timestep: float, after_step: int = 0) -> int:
        """Solver step whose timestep is nearest to ``timestep``, searching from ``after_step`` on.

        Also accepts timesteps handed to the denoiser on the 0..1 scale (Flux-style ``t / 1000``).
        """
        best, best_error = None, float("inf")
        for scale in (1.0, float(self.num_train_timesteps)):
            for iteration, step in enumerate(self.step_of_iteration):
                error = abs(self.timesteps[iteration] - timestep * scale)
                if step >= after_step and error < best_error:
                    best, best_error = step, error
        tolerance = 5e-3 * max(abs(t) for t in self.timesteps) + 1e-6
        if best is None or best_error > tolerance:
            raise ValueError(
                f"timestep {timestep:g} is not on the scheduler's grid ({self.scheduler_name}: "
                f"{self.timesteps[0]:g} .. {self.timesteps[-1]:g}); the router reads the pipeline's live "
                "`scheduler.timesteps`, so the denoiser must be called by that scheduler's loop."
            )
        return best

    @classmethod
    def from_scheduler(cls, scheduler: Any) -> SolverView:
        """Read the live grid of a scheduler on which ``set_timesteps`` has been called."""
        timesteps = getattr(scheduler, "timesteps", None)
        if timesteps is None or len(timesteps) == 0:
            raise ValueError(
                f"{type(scheduler).__name__} has no timesteps yet: call `scheduler.set_timesteps(...)` first."
            )
        ts = torch.as_tensor(timesteps).detach().cpu().double().tolist()
        order = int(getattr(scheduler, "order", 1) or 1)
        kind = scheduler_kind(scheduler)
        sigmas = _native_sigmas(scheduler, ts)
        noise = sigmas if kind == "flow" else [s / (1.0 + s) for s in sigmas]
        return cls(
            timesteps=tuple(ts),
            sigmas=tuple(sigmas),
            noise=tuple(min(max(n, 0.0), 1.0) for n in noise),
            step_of_iteration=tuple(_solver_steps(ts, order)),
            order=order,
            kind=kind,
            scheduler_name=type(scheduler).__name__,
            num_train_timesteps=int(
                getattr(scheduler, "config", {}).get("num_train_timesteps", 1000) or 1000
            ),
        )

    @classmethod
    def from_sigmas(cls, sigmas: Any, order: int = 1, sigma_kind: str = "flow") -> SolverView:
        """The call grid of a k-diffusion sampler over ``sigmas`` (ending in 0, as k-diffusion passes them).

        Order 2 (Heun-type): a predictor at ``sigmas[i]`` and, unless ``sigmas[i + 1]`` is 0, a corrector at
        ``sigmas[i + 1]``, i.e. iterations ``s0, s1, s1, s2, s2, ...`` like diffusers' Heun scheduler.
        """
        if sigma_kind not in ("flow", "ve"):
            raise ValueError(
                f"sigma_kind={sigma_kind!r} must be 'flow' (noise level in [0, 1]) or 've' (EDM sigma)."
            )
        if order not in (1, 2):
            raise ValueError(f"order={order} must be 1 (Euler, DPM++ ...) or 2 (Heun-type samplers).")
        values = torch.as_tensor(sigmas).detach().cpu().double().tolist()
        if len(values) < 2:
            raise ValueError(
                "sigmas must hold at least one step and the final sigma (k-diffusion convention)."
            )
        evaluated = values[:-1]
        if order == 2:
            evaluated = [evaluated[0]]
            for nxt in values[1:]:
                evaluated += [nxt, nxt] if nxt != 0 else []
            evaluated = evaluated[: 2 * (len(values) - 1) - 1]
        noise = evaluated if sigma_kind == "flow" else [s / (1.0 + s) for s in evaluated]
        return cls(
            timesteps=tuple(evaluated),
            sigmas=tuple(evaluated),
            noise=tuple(min(max(n, 0.0), 1.0) for n in noise),
            step_of_iteration=tuple(i // order for i in range(len(evaluated))),
            order=order,
            kind="flow" if sigma_kind == "flow" else "vp",
            scheduler_name=f"k-diffusion sigmas (order {order})",
        )

    @classmethod
    def for_steps(cls, scheduler: Any, num_inference_steps: int, **set_timesteps_kwargs: Any) -> SolverView:
        """The grid ``scheduler`` would use for ``num_inference_steps``, without touching ``scheduler``."""
        probe = copy.deepcopy(scheduler)
        if "sigmas" in set_timesteps_kwargs or "timesteps" in set_timesteps_kwargs:
            probe.set_timesteps(**set_timesteps_kwargs)
        else:
            probe.set_timesteps(num_inference_steps, **set_timesteps_kwargs)
        return cls.from_scheduler(probe)


def scheduler_kind(scheduler: Any) -> str:
    """``"flow"`` for flow-matching schedulers, ``"vp"`` for diffusion (epsilon / v / sample) ones."""
    config = getattr(scheduler, "config", {}) or {}
    if type(scheduler).__name__.startswith("FlowMatch"):
        return "flow"
    if config.get("use_flow_sigmas") or config.get("prediction_type") == "flow_prediction":
        return "flow"
    if hasattr(scheduler, "alphas_cumprod"):
        return "vp"
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and float(torch.as_tensor(sigmas).max()) <= 1.0 + 1e-6:
        return "flow"
    return "vp"


def _native_sigmas(scheduler: Any, timesteps: list[float]) -> list[float]:
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) >= len(timesteps):
        return torch.as_tensor(sigmas).detach().cpu().double()[: len(timesteps)].tolist()
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is None:
        raise ValueError(
            f"{type(scheduler).__name__} exposes neither `sigmas` nor `alphas_cumprod`, so the router cannot "
            "tell the noise level of a step; use a diffusers scheduler or the k-diffusion path "
            "(`router.as_denoiser(sigmas)`)."
        )
    alphas_cumprod = torch.as_tensor(alphas_cumprod).detach().cpu().double().tolist()
    last = len(alphas_cumprod) - 1
    result = []
    for t in timesteps:
        alpha_bar = alphas_cumprod[min(max(int(round(t)), 0), last)]
        result.append(((1.0 - alpha_bar) / alpha_bar) ** 0.5)
    return result


def _solver_steps(timesteps: list[float], order: int) -> list[int]:
    # Second-order schedulers interleave predictor and corrector: iterations 2k and 2k+1 are step k.
    if order > 1:
        return [iteration // order for iteration in range(len(timesteps))]
    # First-order: one step per distinct timestep (PNDM repeats one for its warm-up evaluation).
    steps, seen = [], {}
    for t in timesteps:
        if t not in seen:
            seen[t] = len(seen)
        steps.append(seen[t])
    return steps
