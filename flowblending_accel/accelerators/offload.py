"""Memory modes: keep both models resident (default), or keep only the active model on the accelerator and
move the other to CPU, prefetching the next segment's model on a side stream before its segment starts.

With L-S-L there are two switches per run. ``prefetch_steps`` steps before a segment starts, its model starts
copying to the device (pinned host memory, non-blocking, on its own CUDA stream), so the copy overlaps the
current model's compute; at the segment start the router waits for that copy (the *exposed* switch cost,
recorded per switch) and sends the finished model back to the CPU. On a machine without an accelerator
both devices are the CPU: nothing moves, and the recorded cost is the bookkeeping alone.

Works with ``enable_model_cpu_offload`` and ``enable_group_offload``: the pipeline's own offloading then
places the large model, so only the small model is managed here, on the large model's execution device.

:func:`enable_offload` puts a pipeline loaded on the CPU into one of the memory modes (``model``,
``group``, ``sequential``) without ever moving the whole of it to the accelerator.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core import diffusers_versions
from .registry import AcceleratorConfig, register_accelerator, spec_value
from .runtime import Accelerator, RoutedModels

if TYPE_CHECKING:
    import torch

# Memory modes for a pipeline loaded on the CPU (``enable_offload``): every component resident, diffusers'
# model, group and sequential CPU offload.
OFFLOAD_MODES = ("none", "model", "group", "sequential")


@register_accelerator
@dataclass(frozen=True)
class OffloadInactive(AcceleratorConfig):
    """Keep only the active model on the accelerator; prefetch the next segment's model ``prefetch_steps``
    steps before it starts, on a side stream."""

    prefetch_steps: int = 1
    offload_device: str = "cpu"

    names = ("offload",)
    kind = "memory"
    spec_help = "offload[:prefetch_steps] (inactive model on CPU)"

    def create(self) -> OffloadAccelerator:
        return OffloadAccelerator(self)

    def __post_init__(self) -> None:
        if not isinstance(self.prefetch_steps, int) or self.prefetch_steps < 0:
            raise ValueError(
                f"OffloadInactive.prefetch_steps={self.prefetch_steps!r} must be a whole number >= 0."
            )

    @classmethod
    def from_spec(cls, name: str, value: str) -> OffloadInactive:
        return cls(spec_value(name, value, int, "a whole number of steps") if value else 1)

    @property
    def spec(self) -> str:
        return f"offload:{self.prefetch_steps}"


def enable_offload(pipe: Any, device: str, mode: str) -> list[str]:
    """Put ``pipe`` (its weights still on the CPU, as ``from_pretrained`` loads them) on ``device`` in memory
    mode ``mode``; returns the stack members the mode asks for beside it.

    * ``none``: every component on ``device`` (``pipe.to``);
    * ``model``: diffusers' model CPU offload (each component on the device while it runs);
    * ``group``: group offload, a block at a time with the next one prefetched on a CUDA stream; the small
      model is kept whole on the CPU and prefetched before its stage starts (``offload:1``);
    * ``sequential``: sequential CPU offload (each leaf layer on the device while it runs; the slowest).

    The small model follows whichever mode the large one is in (the router's follower).
    """
    import torch

    if mode not in OFFLOAD_MODES:
        raise ValueError(f"--offload {mode!r}: choose one of {', '.join(OFFLOAD_MODES)}.")
    if mode == "none":
        pipe.to(device)
        return []
    if mode == "model":
        pipe.enable_model_cpu_offload(device=device)
        return []
    if mode == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
        return []
    if torch.accelerator.current_accelerator() is None:  # what older diffusers' group offloading reads
        diffusers_versions.require("group_offload_without_accelerator", "--offload group")
    on_gpu = torch.device(device).type == "cuda"
    pipe.enable_group_offload(
        onload_device=torch.device(device),
        offload_device=torch.device("cpu"),
        offload_type="block_level",
        num_blocks_per_group=1,
        non_blocking=on_gpu,
        use_stream=on_gpu,
    )
    return ["offload:1"]


def execution_device(model: torch.nn.Module) -> torch.device | None:
    """Where ``model`` computes: its offload hook's device (model or group offload), else its weights'."""
    import torch

    from ..core import diffusers_internals
    from ..core.compat import device_of

    hook = getattr(model, "_hf_hook", None)
    if getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    group = diffusers_internals.group_offloading_of(model)
    if group is not None:
        return torch.device(group.onload_device)
    return device_of(model)


class OffloadAccelerator(Accelerator):
    manages_placement = True  # the router leaves the small model's device to it

    def __init__(self, config) -> None:
        import torch

        super().__init__(config)
        self.prefetch_steps, self.offload_device = config.prefetch_steps, torch.device(config.offload_device)
        self.switch_seconds: list[float] = []
        self.runs = 0
        self._models: dict[str, torch.nn.Module] = {}
        self._pending: dict[str, Any] = {}  # CUDA events of copies in flight
        self._prefetched: set[str] = set()

    def check(self, target: RoutedModels, others: list[Accelerator]) -> None:
        if len(target.denoisers) > 1:
            raise ValueError(
                f"offload: this pipeline routes {len(target.denoisers)} denoisers "
                f"{list(target.denoisers)}; the offload memory mode handles one large/small pair. "
                "Use the pipeline's enable_model_cpu_offload() instead."
            )

    def apply(self, target: RoutedModels) -> None:
        import torch

        from ..core import diffusers_internals

        self._models = target.models()
        large = self._models["large"]
        self.device = execution_device(large) or target.device
        if hasattr(large, "_hf_hook") or diffusers_internals.group_offloading_of(large) is not None:
            self._models = {"small": self._models["small"]}  # the pipeline's offloading places the large one
        self._stream = torch.cuda.Stream() if self.device.type == "cuda" else None
        if "small" in self._models:  # off the device before any run, so a run's peak is what it holds
            self._models["small"].to(self.offload_device)

    def remove(self, target: RoutedModels) -> None:
        for model in self._models.values():
            model.to(self.device)
        self._models.clear()

    def _move(self, name: str, device: torch.device) -> None:
        import torch

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
        import torch

        model = segment.model
        if not segment.after_switch:
            return
        start = time.perf_counter()
        other = "small" if model == "large" else "large"
        event = self._pending.pop(model, None)
        if event is not None:
            torch.cuda.current_stream().wait_event(event)
        elif model in self._models and model not in self._prefetched:
            # Not prefetched (prefetch_steps 0): the finished model leaves first, so the two are never on
            # the device together (the peak is the larger one); the copies are fully exposed.
            if other in self._models:
                self._move(other, self.offload_device)
            self._move(model, self.device)
        if self.device.type == "cuda":
            torch.cuda.current_stream().synchronize()
        self.switch_seconds.append(time.perf_counter() - start)
        self._prefetched.discard(model)
        if other in self._models:
            self._move(other, self.offload_device)

    def on_run_end(self, router, stats) -> None:
        # The large model is the pipeline's component: its device is where the next run puts its latents.
        import torch

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
