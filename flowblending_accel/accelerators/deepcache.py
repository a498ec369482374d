"""DeepCache on both UNets of a pair, with no stale deep features after a switch.

DeepCache's helper patches ``pipe.unet`` by name and finds the step from the timestep in positional slot 1;
here each UNet gets its own helper over a stand-in pipeline that reads the live ``pipe.scheduler``, keyword
timesteps are moved to that slot, and a helper's cached features and cycle start are dropped whenever its
UNet starts a segment, so the first step after a gap computes in full.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from .base import Accelerator, Pair


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


class DeepCacheUNets(Accelerator):
    kind = "deepcache"
    stage = "cache"
    exclusive_with = ("fbc", "magcache", "taylorseer", "pab", "seacache", "cache-dit", "tensorrt", "compile")
    clash_reasons = {"compile": "DeepCache swaps block forwards in Python at every step."}

    def __init__(self, cache_interval: int = 3, cache_branch_id: int = 0) -> None:
        self.cache_interval, self.cache_branch_id = cache_interval, cache_branch_id
        self.helpers: dict[str, Any] = {}

    def check(self, pair: Pair, others: list[Accelerator]) -> None:
        import importlib.util

        if importlib.util.find_spec("DeepCache") is None:
            raise ValueError("deepcache: install flowblending-accel[deepcache] (the DeepCache package).")
        for name, model in pair.models().items():
            if not hasattr(model, "down_blocks"):
                raise ValueError(f"deepcache: the {name} model is a {type(model).__name__}; DeepCache works on UNets only.")

    def apply(self, pair: Pair) -> None:
        from DeepCache import DeepCacheSDHelper

        for name, model in pair.models().items():
            helper = DeepCacheSDHelper(pipe=_LivePipe(pair.pipe, model))
            helper.set_params(cache_interval=self.cache_interval, cache_branch_id=self.cache_branch_id)
            helper.enable()
            model.forward = _positional_timestep(model.forward)
            self.helpers[name] = helper

    def remove(self, pair: Pair) -> None:
        for name, helper in self.helpers.items():
            model = pair.models()[name]
            model.forward = model.forward.__wrapped__  # our keyword shim, then DeepCache's own unwrap
            helper.disable()
            if getattr(model.__dict__.get("forward"), "__func__", None) is type(model).forward:
                del model.__dict__["forward"]
        self.helpers.clear()

    def _fresh(self, name: str) -> None:
        helper = self.helpers.get(name)
        if helper is not None:  # not reset_states(): that also drops the saved original forwards
            helper.cached_output, helper.start_timestep = {}, None

    def on_run_start(self, router, plan) -> None:
        for name in self.helpers:
            self._fresh(name)

    def on_segment_start(self, router, model: str, step: int, after_switch: bool) -> None:
        self._fresh(model)

    def on_run_end(self, router, stats) -> None:
        for name in self.helpers:
            self._fresh(name)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "cache_interval": self.cache_interval, "cache_branch_id": self.cache_branch_id}
