"""diffusers' feature caches on every routed model, with state that follows the trajectory's segments.

One diffusers config instance per model (diffusers mutates some in place). The router already resets the
cache state of the model it switches to, so nothing computed before a gap is reused; on top of that:

* MagCache indexes its ``mag_ratios`` by a per-model call counter, which after a gap (or a reset) would
  read the ratio of the wrong step. Its fresh states start at the pipeline's loop iteration instead, so
  ratio ``i`` is always used at iteration ``i``. Ratios are per model (calibrate each model once with
  :func:`calibrate_mag_ratios`).
* TaylorSeer counts calls per model too; after the reset its counter restarts at the segment's first step,
  so its warm-up (``disable_cache_before_step``) is redone after each gap and its Taylor offsets are
  differences of consecutive steps inside one segment, as the method assumes. It hooks the self-attention
  blocks the families registry names (its defaults hook nothing on Wan).
* PyramidAttentionBroadcast reads the pipeline's current timestep (global) and counts per module from the
  segment start; SeaCache reads the step from the cache context and notices gaps itself.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core import diffusers_internals
from ..core.api import add_flowblending_listener, flowblending
from ..core.listeners import RouterListener
from .configs import MagCache
from .runtime import Accelerator, RoutedModels


class DiffusersCacheAccelerator(Accelerator):
    """Counts, per model, the denoiser calls and, for the caches that skip a call's remaining blocks, the
    calls whose last block ran (a hook inside it: not under compile, where a hook would change the graphs)."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self._enabled: list[torch.nn.Module] = []
        self._iteration = 0
        self._labels: dict[int, str] = {}
        self._calls: dict[str, int] = {}
        self._tails: dict[str, int] = {}
        self._handles: list[Any] = []
        self._count_tails = config.skips_tail

    def check(self, target: RoutedModels, others: list[Accelerator]) -> None:
        for label, model in target.models().items():
            if not hasattr(model, "enable_cache"):
                raise ValueError(
                    f"{self.name}: the {label} model ({type(model).__name__}) has no diffusers cache support."
                )
            if getattr(model, "_cache_config", None) is not None:
                raise ValueError(
                    f"{self.name}: the {label} model already has a cache enabled; disable it first."
                )
        if any(other.kind in ("compile", "engine") for other in others):
            self._count_tails = False

    def apply(self, target: RoutedModels) -> None:
        ratios = getattr(self.config, "mag_ratios", None) or {}
        for role in ("large", "small"):
            for label, model in target.models(role).items():
                model.enable_cache(self.config.diffusers_config(target, ratios.get(label, ratios.get(role))))
                self._enabled.append(model)
                self._labels[id(model)] = label
                if self.config.iteration_indexed:
                    _align_mag_states(model, lambda: self._iteration)
                if self._count_tails:
                    self._count_tail_of(label, model)

    def _count_tail_of(self, label: str, model: torch.nn.Module) -> None:
        names = set(getattr(model, "_repeated_blocks", None) or ())
        blocks = [m for m in model.modules() if type(m).__name__ in names]
        leaves = [m for m in (blocks[-1].modules() if blocks else ()) if not list(m.children())]
        if leaves:  # the last block's first layer runs only when the block computes

            def computed(*_, label=label) -> None:
                self._tails[label] = self._tails.get(label, 0) + 1

            self._handles.append(leaves[0].register_forward_pre_hook(computed))

    def remove(self, target: RoutedModels) -> None:
        while self._handles:
            self._handles.pop().remove()
        while self._enabled:
            self._enabled.pop().disable_cache()

    def on_call(self, router, call) -> None:
        label = self._labels.get(id(router.model(call.record.model)))
        if label is not None:
            self._calls[label] = self._calls.get(label, 0) + 1

    def counters(self) -> dict[str, Any]:
        found: dict[str, Any] = {f"{label}.calls": count for label, count in self._calls.items()}
        if self._count_tails:
            for label, calls in self._calls.items():
                found[f"{label}.tail_skipped"] = calls - self._tails.get(label, 0)
        return found

    # MagCache's fresh states start at the loop iteration where the segment starts.
    def on_segment_start(self, router, segment) -> None:
        scheduler = router.scheduler
        iteration = getattr(scheduler, "step_index", None)
        if iteration is None:
            iteration = getattr(scheduler, "begin_index", None) or 0
        self._iteration = iteration


def _align_mag_states(model: torch.nn.Module, iteration) -> None:
    from diffusers.hooks.mag_cache import MagCacheState

    def aligned_state():
        state = MagCacheState()
        state.step_index = iteration()
        return state

    diffusers_internals.make_states_with(model, MagCacheState, aligned_state)


def calibrate_mag_ratios(pipe: Any, small: Any, call_kwargs: dict[str, Any]) -> dict[str, list[float]]:
    """Run the pipeline once all-large and once all-small with MagCache calibration; return the ratios of
    every model by its label (``large`` / ``small``, or per expert for Wan 2.2)."""
    steps = call_kwargs["num_inference_steps"]
    ratios: dict[str, list[float]] = {}
    for role, schedule in (("large", "L100"), ("small", "S100")):
        config = MagCache(calibrate=True, options={"num_inference_steps": steps + 1})  # +1: no wrap-around
        cache = config.create()
        target = RoutedModels.of(pipe, small)
        cache.apply(target)
        recorders = {label: _RatioRecorder(model) for label, model in target.models(role).items()}
        try:
            with flowblending(pipe, small, schedule, denoisers=target.denoisers):
                for recorder in recorders.values():
                    add_flowblending_listener(pipe, recorder)
                pipe(**call_kwargs)
        finally:
            cache.remove(target)
        ratios.update({label: recorder.ratios for label, recorder in recorders.items()})
    return ratios


class _RatioRecorder(RouterListener):
    """Reads MagCache's calibration ratios at run end, before the pipeline's reset clears them."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.ratios = model, []

    def on_run_end(self, router, stats) -> None:
        for state in diffusers_internals.cache_states(self.model):
            found = getattr(state, "calibration_ratios", None)
            if found and len(found) > len(self.ratios):
                self.ratios = list(found)
