"""DeepCache on both UNets of a pair, with no stale deep features after a switch.

DeepCache's helper patches ``pipe.unet`` by name and finds the step from the timestep in positional slot 1;
here each UNet gets its own helper over a stand-in pipeline that reads the live ``pipe.scheduler``, keyword
timesteps are moved to that slot, and a helper's cached features and cycle start are dropped whenever its
UNet starts a segment, so the first step after a gap computes in full.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .registry import AcceleratorConfig, register_accelerator, require_package, spec_value
from .runtime import Accelerator, RoutedModels

if TYPE_CHECKING:
    import torch


@register_accelerator
@dataclass(frozen=True)
class DeepCache(AcceleratorConfig):
    """DeepCache on both UNets: recompute the deep blocks every ``interval`` steps, reuse them in between."""

    interval: int = 3
    branch_id: int = 0

    names = ("deepcache",)
    kind = "cache"
    spec_help = "deepcache[:interval] (UNets)"
    exclusive_with = ("tensorrt", "compile")
    clash_reasons = {"compile": "DeepCache swaps block forwards in Python at every step."}

    def create(self) -> DeepCacheAccelerator:
        return DeepCacheAccelerator(self)

    def __post_init__(self) -> None:
        if not isinstance(self.interval, int) or self.interval < 1:
            raise ValueError(f"DeepCache.interval={self.interval!r} must be a whole number of at least 1.")

    @classmethod
    def from_spec(cls, name: str, value: str) -> DeepCache:
        return cls(spec_value(name, value, int, "a whole-number interval") if value else 3)

    @property
    def spec(self) -> str:
        return f"deepcache:{self.interval}"

    def check_environment(self, device: str) -> None:
        require_package("DeepCache", "deepcache", "deepcache")

    def check_family(self, family, denoisers, solver_kind=None) -> None:
        others = [name for name in denoisers if not family.is_unet(name)]
        if others:
            raise ValueError(
                f"{self.spec}: the {family.name} pipeline's denoiser ({others[0]}) is not a UNet; DeepCache "
                "works on UNets only: use fbc, taylorseer or cache-dit."
            )


class _LivePipe:
    def __init__(self, pipe: Any, unet: torch.nn.Module) -> None:
        self._pipe, self.unet = pipe, unet

    @property
    def scheduler(self) -> Any:
        return self._pipe.scheduler


def _positional_timestep(forward):
    @functools.wraps(forward)
    def call(*args, **kwargs):
        if len(args) < 2 and "timestep" in kwargs:
            sample = args[0] if args else kwargs.pop("sample")
            args = (sample, kwargs.pop("timestep"))
        return forward(*args, **kwargs)

    return call


class DeepCacheAccelerator(Accelerator):
    def __init__(self, config) -> None:
        super().__init__(config)
        self.helpers: dict[int, Any] = {}  # id(unet) -> its DeepCache helper
        self._models: dict[int, torch.nn.Module] = {}

    def check(self, target: RoutedModels, others: list[Accelerator]) -> None:
        self.config.check_environment(str(target.device))
        for attribute in target.denoisers:
            if not target.family.is_unet(attribute):
                large = target.larges[attribute]
                raise ValueError(
                    f"deepcache: pipe.{attribute} is a {type(large).__name__}; DeepCache works on UNets only."
                )
        for label, model in target.models("small").items():
            if not hasattr(model, "down_blocks"):
                raise ValueError(
                    f"deepcache: the {label} model is a {type(model).__name__}; "
                    "DeepCache works on UNets only."
                )

    def apply(self, target: RoutedModels) -> None:
        from DeepCache import DeepCacheSDHelper

        from ..core import patches

        for model in target.models().values():
            helper = DeepCacheSDHelper(pipe=_LivePipe(target.pipe, model))
            helper.set_params(cache_interval=self.config.interval, cache_branch_id=self.config.branch_id)
            helper.enable()
            patches.shim_forward(model, _positional_timestep)
            self.helpers[id(model)], self._models[id(model)] = helper, model

    def remove(self, target: RoutedModels) -> None:
        from ..core import patches

        for key, helper in self.helpers.items():
            model = self._models[key]
            patches.unshim_forward(model)  # our keyword shim, then DeepCache's own unwrap
            helper.disable()
            if getattr(model.__dict__.get("forward"), "__func__", None) is type(model).forward:
                del model.__dict__["forward"]
        self.helpers.clear()
        self._models.clear()

    def _fresh(self, model: Any) -> None:
        helper = self.helpers.get(id(model))
        if helper is not None:  # not reset_states(): that also drops the saved original forwards
            helper.cached_output, helper.start_timestep = {}, None

    def on_run_start(self, router, session) -> None:
        for model in self._models.values():
            self._fresh(model)

    def on_segment_start(self, router, segment) -> None:
        self._fresh(router.model(segment.model))

    def on_run_end(self, router, stats) -> None:
        for model in self._models.values():
            self._fresh(model)
