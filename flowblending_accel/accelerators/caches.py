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

from .. import hooks
from ..api import add_flowblending_listener, flowblending
from ..listeners import RouterListener
from .configs import FirstBlockCache, MagCache, PyramidAttentionBroadcast, SeaCache, TaylorSeer
from .runtime import Accelerator, StackTarget


def _diffusers_config(config, target: StackTarget, role: str, ratios: Any):
    import diffusers

    options = dict(config.options)
    if isinstance(config, FirstBlockCache):
        return diffusers.FirstBlockCacheConfig(threshold=config.threshold, **options)
    if isinstance(config, PyramidAttentionBroadcast):
        pipe = target.pipe
        defaults = {
            "spatial_attention_block_skip_range": 2,
            "current_timestep_callback": lambda: pipe.current_timestep,
        }
        return diffusers.PyramidAttentionBroadcastConfig(**{**defaults, **options})
    if isinstance(config, TaylorSeer):
        pattern = target.family.attention_blocks
        defaults = {
            "taylor_factors_dtype": torch.float32,
            **({"cache_identifiers": [pattern]} if pattern else {}),
        }
        return diffusers.TaylorSeerCacheConfig(**{**defaults, **options})
    if isinstance(config, MagCache):
        calibrating = {"calibrate": True} if config.calibrate else {}
        return diffusers.MagCacheConfig(**{**options, **calibrating, "mag_ratios": ratios})
    if isinstance(config, SeaCache):
        return diffusers.SeaCacheConfig(**options)
    raise TypeError(f"{type(config).__name__} is not a diffusers cache config.")


class DiffusersCacheAccelerator(Accelerator):
    def __init__(self, config) -> None:
        super().__init__(config)
        self._enabled: list[torch.nn.Module] = []
        self._iteration = 0

    def check(self, target: StackTarget, others: list[Accelerator]) -> None:
        for label, model in target.models().items():
            if not hasattr(model, "enable_cache"):
                raise ValueError(
                    f"{self.name}: the {label} model ({type(model).__name__}) has no diffusers cache support."
                )
            if getattr(model, "_cache_config", None) is not None:
                raise ValueError(
                    f"{self.name}: the {label} model already has a cache enabled; disable it first."
                )

    def apply(self, target: StackTarget) -> None:
        ratios = getattr(self.config, "mag_ratios", None) or {}
        for role in ("large", "small"):
            for label, model in target.models(role).items():
                model.enable_cache(
                    _diffusers_config(self.config, target, role, ratios.get(label, ratios.get(role)))
                )
                self._enabled.append(model)
                if isinstance(self.config, MagCache):
                    _align_mag_states(model, lambda: self._iteration)

    def remove(self, target: StackTarget) -> None:
        while self._enabled:
            self._enabled.pop().disable_cache()

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

    hooks.make_states_with(model, MagCacheState, aligned_state)


def calibrate_mag_ratios(pipe: Any, small: Any, call_kwargs: dict[str, Any]) -> dict[str, list[float]]:
    """Run the pipeline once all-large and once all-small with MagCache calibration; return the ratios of
    every model by its label (``large`` / ``small``, or per expert for Wan 2.2)."""
    steps = call_kwargs["num_inference_steps"]
    ratios: dict[str, list[float]] = {}
    for role, schedule in (("large", "L100"), ("small", "S100")):
        config = MagCache(calibrate=True, options={"num_inference_steps": steps + 1})  # +1: no wrap-around
        cache = config.create()
        target = StackTarget.of(pipe, small)
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
        for state in hooks.cache_states(self.model):
            found = getattr(state, "calibration_ratios", None)
            if found and len(found) > len(self.ratios):
                self.ratios = list(found)
