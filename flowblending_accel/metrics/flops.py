"""FLOPs, counted with ``torch.utils.flop_counter`` (multiply-add = 2, attention matmuls included): of one
call on given arguments, of each model on a pipeline's real call arguments, and per model over a whole run.

This is the one place FLOP passes are set up. Counting needs eager modules, so a run's FLOPs come from an
extra pass without the stack's compile and engine members (the work they do is the same; they only make
it faster). Cache hits show up as the work they save.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..accelerators import accelerated, as_configs
from ..api import add_flowblending_listener, flowblending_stats
from ..families import family_for
from ..listeners import RouterListener
from ..stats import RunStats

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
    pipe: Any,
    small: Any,
    schedule: Any,
    call_kwargs: dict[str, Any],
    stack=(),
    listeners: tuple[RouterListener, ...] = (),
) -> tuple[dict[str, int], RunStats]:
    """FLOPs per model of one ``pipe(**call_kwargs)`` under ``schedule`` and the countable part of ``stack``.
    Returns the FLOPs and the run's stats; ``listeners`` (e.g. an attention meter) follow the same run."""
    countable = [config for config in as_configs(stack) if config.kind not in NOT_COUNTABLE]
    with accelerated(pipe, small, schedule, countable, count_flops=True, timing="off"):
        for listener in listeners:
            add_flowblending_listener(pipe, listener)
        with torch.inference_mode():
            pipe(**call_kwargs)
        stats = flowblending_stats(pipe)
    return {model: int(value) for model, value in sorted(stats.flops_per_model.items())}, stats


__all__ = ["NOT_COUNTABLE", "call_flops", "capture_first_call", "flops_per_call", "run_flops"]
