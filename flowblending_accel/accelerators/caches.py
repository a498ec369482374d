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

Beside context parallelism a cache is enabled beneath diffusers' split hooks (its first-block hook sees the
shard the block computes), and FirstBlockCache, the one that decides from the activations, decides from the
whole sequence on every rank (``decide_across_ranks``); the others decide alike on every rank already.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..core import diffusers_versions
from ..core.listeners import RouterListener
from .registry import (
    AcceleratorConfig,
    register_accelerator,
    require_transformers,
    spec_value,
)
from .runtime import Accelerator, RoutedModels

if TYPE_CHECKING:  # loaded when a cache is applied, not when the registry is read
    import torch


@dataclass(frozen=True)
class _DiffusersCache(AcceleratorConfig):
    """A diffusers feature cache on every routed model; ``options`` go to its diffusers config."""

    options: Mapping[str, Any] = field(default_factory=dict, kw_only=True)

    kind = "cache"
    exclusive_with = ("tensorrt",)
    # Skips a call's remaining blocks as a whole (the runtime counts those skips per model).
    skips_tail: ClassVar[bool] = False
    # Its per-model state is indexed by the loop iteration (the runtime aligns it with the run's).
    iteration_indexed: ClassVar[bool] = False
    # The diffusers_versions feature it needs, when older supported diffusers lack it.
    needs: ClassVar[str] = ""
    # Keeps its state per cache context: without one FirstBlockCache and TaylorSeer raise, MagCache shares
    # one state between the CFG branches and SeaCache never caches.
    needs_cache_context: ClassVar[bool] = True

    def check_environment(self, device: str) -> None:
        if self.needs:
            diffusers_versions.require(self.needs, self.spec)

    def create(self) -> DiffusersCacheAccelerator:
        return DiffusersCacheAccelerator(self)

    def check_family(self, family, denoisers, solver_kind=None) -> None:
        require_transformers(self.spec, family, denoisers)
        if self.needs_cache_context and not family.cache_context:
            raise ValueError(
                f"{self.spec}: the {family.name} pipeline calls its denoiser outside any cache_context, and "
                "this cache keeps its state per context; use the model's classic pipeline, or cache-dit."
            )

    def diffusers_config(self, models: Any, ratios: Any = None) -> Any:
        """The diffusers cache config this declares for ``models`` (the routed pipeline); ``ratios``: the
        model's MagCache ratios. diffusers is imported here, not with the registry."""
        raise NotImplementedError

    def decide_across_ranks(self, model: torch.nn.Module, together: bool) -> None:
        """Make ``model``'s skip decisions from the whole sequence while it runs split across ranks
        (``together``), or undo that. Nothing to do for a cache whose decisions every rank already takes
        alike: by step or timestep (TaylorSeer, PAB), from precomputed ratios (MagCache), or from the
        pipeline's unsplit latents (SeaCache)."""


@register_accelerator
@dataclass(frozen=True)
class FirstBlockCache(_DiffusersCache):
    """diffusers' FirstBlockCache: skip the tail of the model while the first block's residual changes
    less than ``threshold``."""

    threshold: float = 0.05

    names = ("fbc",)
    spec_help = "fbc[:threshold]"

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise ValueError(f"FirstBlockCache.threshold={self.threshold!r} must be positive, e.g. 0.05.")

    @classmethod
    def from_spec(cls, name: str, value: str) -> FirstBlockCache:
        return cls(threshold=spec_value(name, value, float, "a positive threshold") if value else 0.05)

    @property
    def spec(self) -> str:
        return f"fbc:{self.threshold:g}"

    skips_tail = True

    def diffusers_config(self, models: Any, ratios: Any = None) -> Any:
        import diffusers

        return diffusers.FirstBlockCacheConfig(threshold=self.threshold, **self.options)

    def decide_across_ranks(self, model: torch.nn.Module, together: bool) -> None:
        # It thresholds the first block's residual, which each rank of a split holds one shard of.
        from ..core import patches

        (patches.decide_across_ranks if together else patches.decide_alone)(model)


@register_accelerator
@dataclass(frozen=True)
class TaylorSeer(_DiffusersCache):
    names = ("taylorseer",)
    spec_help = "taylorseer"

    def diffusers_config(self, models: Any, ratios: Any = None) -> Any:
        import diffusers
        import torch

        pattern = models.family.attention_blocks
        defaults = {
            "taylor_factors_dtype": torch.float32,
            **({"cache_identifiers": [pattern]} if pattern else {}),
        }
        return diffusers.TaylorSeerCacheConfig(**{**defaults, **self.options})


@register_accelerator
@dataclass(frozen=True)
class PyramidAttentionBroadcast(_DiffusersCache):
    names = ("pab",)
    spec_help = "pab"

    needs_cache_context = False  # one state per attention module, read by the pipeline's timestep

    def check_family(self, family, denoisers, solver_kind=None) -> None:
        super().check_family(family, denoisers, solver_kind)
        if not family.current_timestep and "current_timestep_callback" not in self.options:
            raise ValueError(
                f"pab: the {family.name} pipeline keeps no current_timestep, which PyramidAttentionBroadcast "
                "reads to decide its skips; pass options={'current_timestep_callback': ...}, or use the "
                "model's classic pipeline."
            )

    def diffusers_config(self, models: Any, ratios: Any = None) -> Any:
        import diffusers

        pipe = models.pipe
        defaults = {
            "spatial_attention_block_skip_range": 2,
            "current_timestep_callback": lambda: pipe.current_timestep,
        }
        return diffusers.PyramidAttentionBroadcastConfig(**{**defaults, **self.options})


@register_accelerator
@dataclass(frozen=True)
class SeaCache(_DiffusersCache):
    names = ("seacache",)
    spec_help = "seacache"
    needs = "seacache"

    def diffusers_config(self, models: Any, ratios: Any = None) -> Any:
        import diffusers

        return diffusers.SeaCacheConfig(**self.options)


@register_accelerator
@dataclass(frozen=True)
class MagCache(_DiffusersCache):
    """MagCache needs per-model magnitude ratios indexed by loop iteration: give ``mag_ratios={"large": [...],
    "small": [...]}`` (see ``calibrate_mag_ratios``) or ``calibrate=True`` to record them."""

    mag_ratios: Mapping[str, Any] | None = None
    calibrate: bool = False

    names = ("magcache",)
    spec_help = "magcache:calibrate"
    needs = "magcache"

    def __post_init__(self) -> None:
        if not self.calibrate and not self.mag_ratios:
            raise ValueError(
                "MagCache needs mag_ratios per model: pass mag_ratios={'large': [...], 'small': [...]} "
                "(see calibrate_mag_ratios) and num_inference_steps in options, or calibrate=True."
            )

    @classmethod
    def from_spec(cls, name: str, value: str) -> MagCache:
        if value != "calibrate":
            raise ValueError(
                f"accelerator '{name}:{value}': write 'magcache:calibrate' (ratios come from Python)."
            )
        return cls(calibrate=True)

    @property
    def spec(self) -> str:
        return "magcache:calibrate" if self.calibrate else "magcache"

    skips_tail = True
    iteration_indexed = True

    def diffusers_config(self, models: Any, ratios: Any = None) -> Any:
        import diffusers

        calibrating = {"calibrate": True} if self.calibrate else {}
        return diffusers.MagCacheConfig(**{**self.options, **calibrating, "mag_ratios": ratios})


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
        self.config.check_environment(str(target.device))  # the stack checks it only when a device is known
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
        from ..core import diffusers_internals

        self.config.check_environment(str(target.device))  # calibrate_mag_ratios applies without check()
        ratios = getattr(self.config, "mag_ratios", None) or {}
        for role in ("large", "small"):
            for label, model in target.models(role).items():
                config = self.config.diffusers_config(target, ratios.get(label, ratios.get(role)))
                with diffusers_internals.outside_the_split(model):  # a model already split: one shard
                    model.enable_cache(config)
                diffusers_internals.refresh_child_registries(model)
                self.config.decide_across_ranks(model, together=True)
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
        from ..core import diffusers_internals

        while self._handles:
            self._handles.pop().remove()
        while self._enabled:
            model = self._enabled.pop()
            self.config.decide_across_ranks(model, together=False)
            with diffusers_internals.outside_the_split(model):
                model.disable_cache()
            diffusers_internals.refresh_child_registries(model)

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

    from ..core import diffusers_internals

    def aligned_state():
        state = MagCacheState()
        state.step_index = iteration()
        return state

    diffusers_internals.make_states_with(model, MagCacheState, aligned_state)


def calibrate_mag_ratios(pipe: Any, small: Any, call_kwargs: dict[str, Any]) -> dict[str, list[float]]:
    """Run the pipeline once all-large and once all-small with MagCache calibration; return the ratios of
    every model by its label (``large`` / ``small``, or per expert for Wan 2.2)."""
    from ..core.api import add_flowblending_listener
    from .stack import FlowBlendingConfig, flowblending

    steps = call_kwargs["num_inference_steps"]
    ratios: dict[str, list[float]] = {}
    for role, schedule in (("large", "L100"), ("small", "S100")):
        config = MagCache(calibrate=True, options={"num_inference_steps": steps + 1})  # +1: no wrap-around
        cache = config.create()
        target = RoutedModels.of(pipe, small)
        cache.apply(target)
        recorders = {label: _RatioRecorder(model) for label, model in target.models(role).items()}
        try:
            with flowblending(pipe, small, FlowBlendingConfig(schedule, denoisers=target.denoisers)):
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
        from ..core import diffusers_internals

        for state in diffusers_internals.cache_states(self.model):
            found = getattr(state, "calibration_ratios", None)
            if found and len(found) > len(self.ratios):
                self.ratios = list(found)
