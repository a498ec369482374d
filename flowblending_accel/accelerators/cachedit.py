"""cache-dit (DBCache) on both transformers, transformer-only contexts refreshed per run and per segment.

cache-dit counts steps per call of each transformer and warms up at the start of a context; a persistent
transformer-only context would carry its counters and residuals across runs and across a gap. Each segment
therefore starts with a fresh context sized to the segment's own number of steps.
"""

from __future__ import annotations

from typing import Any

from .base import Accelerator, Pair


class CacheDiT(Accelerator):
    kind = "cache-dit"
    stage = "cache"
    exclusive_with = ("fbc", "magcache", "taylorseer", "pab", "seacache", "deepcache", "tensorrt")

    def __init__(self, **config: Any) -> None:
        self.config = config
        self._models: dict[str, Any] = {}

    def check(self, pair: Pair, others: list[Accelerator]) -> None:
        import importlib.util

        if importlib.util.find_spec("cache_dit") is None:
            raise ValueError("cache-dit: install flowblending-accel[cache-dit].")

    def apply(self, pair: Pair) -> None:
        import cache_dit

        separate_cfg = type(pair.pipe).__name__.startswith("Wan")  # Wan calls cond and uncond separately
        for name, model in pair.models().items():
            config = cache_dit.DBCacheConfig(**{"enable_separate_cfg": separate_cfg, **self.config})
            cache_dit.enable_cache(model, cache_config=config)
            self._models[name] = model

    def remove(self, pair: Pair) -> None:
        import cache_dit

        for model in self._models.values():
            cache_dit.disable_cache(model)
        self._models.clear()

    def on_segment_start(self, router, model: str, step: int, after_switch: bool) -> None:
        import cache_dit

        run = router._run
        length = next(last - first + 1 for m, first, last in run.plan.segments() if first <= step <= last)
        cache_dit.refresh_context(self._models[model], num_inference_steps=length)

    def counters(self) -> dict[str, Any]:
        import cache_dit

        found = {}
        for name, model in self._models.items():
            summaries = cache_dit.summary(model) or []
            found[name] = [{"cached_steps": len(getattr(s, "cached_steps", []) or [])} for s in summaries]
        return found

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.config}
