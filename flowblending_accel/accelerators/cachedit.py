"""cache-dit (DBCache) on both transformers, transformer-only contexts refreshed per run and per segment.

cache-dit counts steps per call of each transformer and warms up at the start of a context; a persistent
transformer-only context would carry its counters and residuals across runs and across a gap. Each segment
therefore starts with a fresh context sized to the segment's own number of steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .registry import AcceleratorConfig, register_accelerator, require_package, require_transformers
from .runtime import Accelerator, RoutedModels


@register_accelerator
@dataclass(frozen=True)
class CacheDiT(AcceleratorConfig):
    """cache-dit's DBCache on both transformers; ``options`` go to its ``DBCacheConfig``."""

    options: Mapping[str, Any] = field(default_factory=dict)

    names = ("cache-dit",)
    kind = "cache"
    spec_help = "cache-dit"
    exclusive_with = ("tensorrt",)
    # Under torchrun cache-dit averages its residual-difference statistics over the default process group.
    decides_over_world = True

    def create(self) -> CacheDiTAccelerator:
        return CacheDiTAccelerator(self)

    def check_environment(self, device: str) -> None:
        require_package("cache_dit", "cache-dit", "cache-dit")

    def check_family(self, family, denoisers, solver_kind=None) -> None:
        require_transformers(self.spec, family, denoisers)


class CacheDiTAccelerator(Accelerator):
    def __init__(self, config) -> None:
        super().__init__(config)
        self._models: dict[str, Any] = {}

    def check(self, target: RoutedModels, others: list[Accelerator]) -> None:
        self.config.check_environment(str(target.device))

    def apply(self, target: RoutedModels) -> None:
        import cache_dit

        from ..core.diffusers_internals import outside_the_split

        # cache-dit tells cond from uncond by call parity when the pipeline makes one call per CFG branch.
        options = {"enable_separate_cfg": target.family.separate_cfg_calls, **self.config.options}
        for label, model in target.models().items():
            with outside_the_split(model):  # it wraps the forward: beneath diffusers' split, in and out
                cache_dit.enable_cache(model, cache_config=cache_dit.DBCacheConfig(**options))
            self._models[label] = model

    def remove(self, target: RoutedModels) -> None:
        import cache_dit

        from ..core.diffusers_internals import outside_the_split

        for model in self._models.values():
            with outside_the_split(model):
                cache_dit.disable_cache(model)
        self._models.clear()

    def on_segment_start(self, router, segment) -> None:
        import cache_dit

        cache_dit.refresh_context(router.model(segment.model), num_inference_steps=segment.length)

    def counters(self) -> dict[str, Any]:
        import cache_dit

        found = {}
        for label, model in self._models.items():
            summaries = cache_dit.summary(model) or []
            found[label] = [{"cached_steps": len(getattr(s, "cached_steps", []) or [])} for s in summaries]
        return found
