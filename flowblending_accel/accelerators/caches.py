"""diffusers' feature caches on both models, with state that follows the trajectory's segments.

One config instance per model (diffusers mutates some in place). The router already resets the cache
state of the model it switches to, so nothing computed before a gap is reused; on top of that:

* MagCache indexes its ``mag_ratios`` by a per-model call counter, which after a gap (or a reset) would
  read the ratio of the wrong step. Its fresh states start at the pipeline's loop iteration instead, so
  ratio ``i`` is always used at iteration ``i``. Ratios are per model (calibrate each model once with
  :func:`calibrate_mag_ratios`).
* TaylorSeer counts calls per model too; after the reset its counter restarts at the segment's first step,
  so its warm-up (``disable_cache_before_step``) is redone after each gap and its Taylor offsets are
  differences of consecutive steps inside one segment, as the method assumes.
* PyramidAttentionBroadcast reads the pipeline's current timestep (global) and counts per module from the
  segment start; SeaCache reads the step from the cache context and notices gaps itself.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Accelerator, Pair

KINDS = ("fbc", "magcache", "taylorseer", "pab", "seacache")
_TAYLORSEER_PATTERNS = {"WanTransformer3DModel": [r"blocks\.\d+\.attn1"], "LTXVideoTransformer3DModel": [r"transformer_blocks\.\d+\.attn1"]}


def _config(kind: str, pipe: Any, model: torch.nn.Module, options: dict[str, Any], ratios: Any):
    import diffusers

    if kind == "fbc":
        return diffusers.FirstBlockCacheConfig(**{"threshold": 0.05, **options})
    if kind == "pab":
        defaults = {"spatial_attention_block_skip_range": 2, "current_timestep_callback": lambda: pipe.current_timestep}
        return diffusers.PyramidAttentionBroadcastConfig(**{**defaults, **options})
    if kind == "taylorseer":
        patterns = _TAYLORSEER_PATTERNS.get(type(model).__name__)
        defaults = {"taylor_factors_dtype": torch.float32, **({"cache_identifiers": patterns} if patterns else {})}
        return diffusers.TaylorSeerCacheConfig(**{**defaults, **options})
    if kind == "magcache":
        return diffusers.MagCacheConfig(**{**options, "mag_ratios": ratios})
    return diffusers.SeaCacheConfig(**options)


class DiffusersCache(Accelerator):
    """``DiffusersCache("fbc", threshold=0.05)``; for MagCache give ``num_inference_steps`` and per-model
    ``mag_ratios={"large": [...], "small": [...]}`` (loop iterations, e.g. from :func:`calibrate_mag_ratios`)."""

    stage = "cache"
    exclusive_with = ("deepcache", "cache-dit", "tensorrt")

    def __init__(self, kind: str, mag_ratios: dict[str, Any] | None = None, **options: Any) -> None:
        if kind not in KINDS:
            raise ValueError(f"cache kind {kind!r} is unknown; choose one of {KINDS}.")
        if kind == "magcache" and not options.get("calibrate") and not mag_ratios:
            raise ValueError(
                "MagCache needs mag_ratios per model: pass mag_ratios={'large': [...], 'small': [...]} "
                "(see calibrate_mag_ratios) and num_inference_steps."
            )
        self.kind, self.options, self.mag_ratios = kind, options, mag_ratios or {}
        self._enabled: list[torch.nn.Module] = []
        self._iteration = 0

    def check(self, pair: Pair, others: list[Accelerator]) -> None:
        for name, model in pair.models().items():
            if not hasattr(model, "enable_cache"):
                raise ValueError(f"{self.kind}: the {name} model ({type(model).__name__}) has no diffusers cache support.")
            if getattr(model, "_cache_config", None) is not None:
                raise ValueError(f"{self.kind}: the {name} model already has a cache enabled; disable it first.")

    def apply(self, pair: Pair) -> None:
        for name, model in pair.models().items():
            model.enable_cache(_config(self.kind, pair.pipe, model, dict(self.options), self.mag_ratios.get(name)))
            self._enabled.append(model)
            if self.kind == "magcache":
                _align_mag_states(model, lambda: self._iteration)

    def remove(self, pair: Pair) -> None:
        while self._enabled:
            self._enabled.pop().disable_cache()

    # Router events: MagCache's fresh states start at the loop iteration where the segment starts.
    def on_segment_start(self, router, model: str, step: int, after_switch: bool) -> None:
        scheduler = router.scheduler
        iteration = getattr(scheduler, "step_index", None)
        if iteration is None:
            iteration = getattr(scheduler, "begin_index", None) or 0
        self._iteration = iteration

    def describe(self) -> dict[str, Any]:
        shown = {k: v for k, v in self.options.items() if not callable(v)}
        return {"kind": self.kind, **shown}


def _align_mag_states(model: torch.nn.Module, iteration) -> None:
    from diffusers.hooks.mag_cache import MagCacheState

    from .._hooks import stateful_hooks

    def aligned_state():
        state = MagCacheState()
        state.step_index = iteration()
        return state

    for _, hook in stateful_hooks(model):
        manager = getattr(hook, "state_manager", None)
        if manager is not None and manager._state_cls is MagCacheState:
            manager._state_cls = aligned_state


def calibrate_mag_ratios(pipe: Any, small: torch.nn.Module, call_kwargs: dict[str, Any]) -> dict[str, list[float]]:
    """Run the pipeline once per model with MagCache calibration and return each model's ratios."""
    from ..api import apply_flowblending_, remove_flowblending_

    steps = call_kwargs["num_inference_steps"]
    ratios: dict[str, list[float]] = {}
    for name, schedule in (("large", "L100"), ("small", "S100")):
        cache = DiffusersCache("magcache", calibrate=True, num_inference_steps=steps + 1)  # +1: no wrap-around
        pair = Pair(pipe, small)
        cache.apply(pair)
        router = apply_flowblending_(pipe, small, schedule)
        recorder = _RatioRecorder(pair.models()[name])
        router.add_listener(recorder)
        try:
            pipe(**call_kwargs)
        finally:
            remove_flowblending_(pipe)
            cache.remove(pair)
        ratios[name] = recorder.ratios
    return ratios


class _RatioRecorder:
    """Reads MagCache's calibration ratios at run end, before the pipeline's reset clears them."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.ratios = model, []

    def on_run_end(self, router, stats) -> None:
        from .._hooks import stateful_hooks

        for _, hook in stateful_hooks(self.model):
            manager = getattr(hook, "state_manager", None)
            for state in getattr(manager, "_state_cache", {}).values():
                found = getattr(state, "calibration_ratios", None)
                if found and len(found) > len(self.ratios):
                    self.ratios = list(found)
