"""FLOPs, counted with ``torch.utils.flop_counter`` (multiply-add = 2, attention matmuls included): of one
call on given arguments, of each model on a pipeline's real call arguments, and per model over a whole run.

This is the one place FLOP passes are set up. Counting needs eager modules, so a run's FLOPs come from an
extra pass without the stack's compile and engine members (the work they do is the same; they only make
it faster). Cache hits show up as the work they save.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from ..accelerators import AcceleratorConfig, FlowBlendingConfig, flowblending
from ..core.api import SmallModels, add_flowblending_listener, flowblending_stats
from ..core.families import family_for
from ..core.listeners import RouterListener
from ..core.schedule import Schedule
from ..core.stats import RunStats

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

# Accelerator kinds left out of a FLOP pass: compiled code cannot run under a FLOP counter, and moving
# weights (memory modes) does no arithmetic.
NOT_COUNTABLE = ("compile", "engine", "memory")


@contextmanager
def capture_first_call(module: torch.nn.Module) -> Iterator[dict[str, Any]]:
    """Record the positional and keyword arguments of ``module``'s first call inside the block.

    Yields a dict that holds ``args`` and ``kwargs`` once a call happened.
    """
    captured: dict[str, Any] = {}

    def grab(_module, args, kwargs):
        captured.setdefault("args", args)
        captured.setdefault("kwargs", kwargs)

    handle = module.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


class _Captured(Exception):
    """Raised by :func:`first_call_arguments`'s hook: the pipeline stops at its first denoiser call."""


def first_call_arguments(pipe: Any, module: torch.nn.Module, call_kwargs: dict[str, Any]) -> tuple:
    """``(args, kwargs)`` of the first call ``pipe(**call_kwargs)`` makes to ``module``; the pipeline stops
    there, before any step, so this works on a pipeline built on the ``meta`` device too (no weights, no
    arithmetic)."""
    captured: dict[str, Any] = {}

    def grab(_module, args, kwargs):
        captured.update(args=args, kwargs=kwargs)
        raise _Captured

    handle = module.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.inference_mode():
            pipe(**call_kwargs)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"the pipeline never called its {type(module).__name__}.")
    return captured["args"], captured["kwargs"]


class _LargestTensor(TorchDispatchMode):
    """The bytes of the largest output of a weight matmul or convolution (a feed-forward layer's hidden
    activations, usually): what a call's activations peak around. Attention's score matrices are left out:
    fused attention kernels never hold them, though ``meta`` tensors take the unfused path."""

    LAYERS = ("aten.mm.default", "aten.addmm.default", "aten.convolution.default")

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if str(func) in self.LAYERS:
            for leaf in tree_leaves(out):
                if isinstance(leaf, torch.Tensor):
                    self.largest = max(self.largest, leaf.numel() * leaf.element_size())
        return out


@dataclass(frozen=True)
class CallCount:
    """One counted call: its FLOPs, the share of them in the model's repeated blocks (what a feature cache
    skips), and the largest tensor it made."""

    flops: int
    block_flops: int
    largest_tensor_bytes: int


def repeated_block_paths(model: torch.nn.Module) -> list[str]:
    """Paths of the model's repeated transformer blocks: the classes diffusers lists in
    ``_repeated_blocks`` (what regional compile compiles), else the children of its longest ModuleList."""
    names = set(getattr(model, "_repeated_blocks", None) or ())
    found = [path for path, module in model.named_modules() if type(module).__name__ in names]
    if found:
        return found
    lists = [(path, m) for path, m in model.named_modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        return []
    path, longest = max(lists, key=lambda item: len(item[1]))
    return [f"{path}.{index}" if path else str(index) for index in range(len(longest))]


@torch.no_grad()
def count_call(module: torch.nn.Module, args: tuple = (), kwargs: dict | None = None) -> CallCount:
    """Count one ``module(*args, **kwargs)`` (on real or ``meta`` tensors alike)."""
    largest = _LargestTensor()
    with FlopCounterMode(display=False) as counter, largest:
        module(*args, **(kwargs or {}))
    per_module = counter.get_flop_counts()
    root = type(module).__name__
    blocks = sum(sum(per_module.get(f"{root}.{path}", {}).values()) for path in repeated_block_paths(module))
    return CallCount(int(counter.get_total_flops()), int(blocks), largest.largest)


@torch.no_grad()
def call_flops(fn, args: tuple = (), kwargs: dict | None = None) -> int:
    """Total FLOPs of ``fn(*args, **kwargs)``."""
    with FlopCounterMode(display=False) as counter:
        fn(*args, **(kwargs or {}))
    return int(counter.get_total_flops())


def flops_per_call(pipe: Any, small: Any, call_kwargs: dict[str, Any]) -> dict[str, int]:
    """FLOPs of one call of the large and of the small model, on the arguments ``pipe(**call_kwargs)`` gives
    its denoiser first (the call is made with ``num_inference_steps=1``)."""
    large = getattr(pipe, family_for(pipe).present_denoisers(pipe)[0])
    with capture_first_call(large) as call, torch.inference_mode():
        pipe(**{**call_kwargs, "num_inference_steps": 1})
    return {
        "large": call_flops(large, call["args"], call["kwargs"]),
        "small": call_flops(small, call["args"], call["kwargs"]),
    }


def run_flops(
    pipe: DiffusionPipeline,
    small: SmallModels,
    schedule: Schedule,
    call_kwargs: dict[str, Any],
    stack: Iterable[AcceleratorConfig] = (),
    listeners: tuple[RouterListener, ...] = (),
) -> tuple[dict[str, int], RunStats]:
    """FLOPs per model of one ``pipe(**call_kwargs)`` under ``schedule`` and the countable part of ``stack``.
    Returns the FLOPs and the run's stats; ``listeners`` (e.g. an attention meter) follow the same run."""
    countable = [config.for_rounds() for config in stack if config.kind not in NOT_COUNTABLE]
    with flowblending(
        pipe, small, FlowBlendingConfig(schedule, accelerators=countable, count_flops=True, timing="off")
    ):
        for listener in listeners:
            add_flowblending_listener(pipe, listener)
        with torch.inference_mode():
            pipe(**call_kwargs)
        stats = flowblending_stats(pipe)
    return {model: int(value) for model, value in sorted(stats.flops_per_model.items())}, stats


__all__ = [
    "NOT_COUNTABLE",
    "CallCount",
    "call_flops",
    "capture_first_call",
    "count_call",
    "first_call_arguments",
    "flops_per_call",
    "repeated_block_paths",
    "run_flops",
]
