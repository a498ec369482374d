"""How the router times one denoiser call: the host clock, or CUDA events resolved after the run."""

from __future__ import annotations

import time
from typing import Any

import torch

from .compat import device_of
from .stats import CallRecord


def timing_mode(timing: str, large: Any) -> str:
    """``"auto"`` resolved: CUDA events when the large model is on a GPU, the host clock otherwise."""
    if timing == "auto":
        device = device_of(large)
        return "cuda" if device is not None and device.type == "cuda" else "host"
    return timing


class CallTimer:
    """Host clock per call, or a CUDA event pair resolved after the run (no sync inside the loop)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        if mode == "cuda":
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)
            self.start.record()
        elif mode == "host":
            self.start = time.perf_counter()

    def stop(self, record: CallRecord) -> tuple[Any, Any] | None:
        if self.mode == "cuda":
            self.end.record()
            return self.start, self.end
        if self.mode == "host":
            record.seconds = time.perf_counter() - self.start
        return None
