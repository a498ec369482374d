"""Memory modes: keep both models resident (default), or keep only the active model on the accelerator and
move the other to CPU, prefetching the next segment's model on a side stream before its segment starts.

With L-S-L there are two switches per run. ``prefetch_steps`` steps before a segment starts, its model starts
copying to the device (pinned host memory, non-blocking, on its own CUDA stream), so the copy overlaps the
current model's compute; at the segment start the router waits for that copy (the *exposed* switch cost,
recorded per switch) and sends the finished model back to the CPU. On a machine without an accelerator
both devices are the CPU: nothing moves, and the recorded cost is the bookkeeping alone.

Works with ``enable_model_cpu_offload``: accelerate then places the large model per call, so only the small
model is managed here.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from .runtime import Accelerator, StackTarget


class OffloadAccelerator(Accelerator):
    manages_placement = True  # the router leaves the small model's device to it

    def __init__(self, config) -> None:
        super().__init__(config)
        self.prefetch_steps, self.offload_device = config.prefetch_steps, torch.device(config.offload_device)
        self.switch_seconds: list[float] = []
        self.runs = 0
        self._models: dict[str, torch.nn.Module] = {}
        self._pending: dict[str, Any] = {}  # CUDA events of copies in flight
        self._prefetched: set[str] = set()

    def check(self, target: StackTarget, others: list[Accelerator]) -> None:
        if len(target.denoisers) > 1:
            raise ValueError(
                f"offload: this pipeline routes {len(target.denoisers)} denoisers "
                f"{list(target.denoisers)}; the offload memory mode handles one large/small pair. "
                "Use the pipeline's enable_model_cpu_offload() instead."
            )

    def apply(self, target: StackTarget) -> None:
        self._models = target.models()
        if hasattr(
            self._models["large"], "_hf_hook"
        ):  # accelerate's model offload already manages the large model
            self._models = {"small": self._models["small"]}
        self.device = target.device
        self._stream = torch.cuda.Stream() if self.device.type == "cuda" else None

    def remove(self, target: StackTarget) -> None:
        for model in self._models.values():
            model.to(self.device)
        self._models.clear()

    def _move(self, name: str, device: torch.device) -> None:
        model = self._models.get(name)
        if model is None:
            return
        if self._stream is not None:  # both directions on the side stream: ordered, overlapping compute
            self._stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self._stream):
                model.to(device, non_blocking=True)
            if device.type == "cuda":
                self._pending[name] = self._stream.record_event()
        else:
            model.to(device)

    def on_run_start(self, router, session) -> None:
        self.runs += 1
        self._segments = session.plan.segments()
        self._prefetched.clear()
        first_model = self._segments[0][0]
        for name in self._models:
            self._move(name, self.device if name == first_model else self.offload_device)

    def on_call(self, router, call) -> None:
        record = call.record
        for model, first, _ in self._segments:
            if (
                first - self.prefetch_steps == record.step
                and model != record.model
                and model not in self._prefetched
            ):
                self._prefetched.add(model)
                self._move(model, self.device)

    def on_segment_start(self, router, segment) -> None:
        model = segment.model
        if not segment.after_switch:
            return
        start = time.perf_counter()
        event = self._pending.pop(model, None)
        if event is not None:
            torch.cuda.current_stream().wait_event(event)
        elif model in self._models and model not in self._prefetched:
            self._move(model, self.device)  # not prefetched (prefetch_steps 0): the copy is fully exposed
        if self.device.type == "cuda":
            torch.cuda.current_stream().synchronize()
        self.switch_seconds.append(time.perf_counter() - start)
        self._prefetched.discard(model)
        other = "small" if model == "large" else "large"
        if other in self._models:
            self._move(other, self.offload_device)

    def on_run_end(self, router, stats) -> None:
        # The large model is the pipeline's component: its device is where the next run puts its latents.
        if "large" in self._models:
            self._move("large", self.device)
            event = self._pending.pop("large", None)
            if event is not None:
                torch.cuda.current_stream().wait_event(event)

    def counters(self) -> dict[str, Any]:
        """Totals over every run so far, and the mean per run."""
        runs = max(self.runs, 1)
        return {
            "runs": self.runs,
            "switches": len(self.switch_seconds),
            "switches_per_run": len(self.switch_seconds) / runs,
            "exposed_switch_seconds_per_run": sum(self.switch_seconds) / runs,
        }
