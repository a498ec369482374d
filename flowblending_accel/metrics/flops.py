"""FLOPs of one denoiser call, measured with ``torch.utils.flop_counter`` on the call's real arguments."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode


@contextmanager
def capture_first_call(module: torch.nn.Module):
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
    """Total FLOPs (multiply-add = 2) of ``fn(*args, **kwargs)``, attention matmuls included."""
    with FlopCounterMode(display=False) as counter:
        fn(*args, **(kwargs or {}))
    return int(counter.get_total_flops())
