"""TensorRT engines: one torch-tensorrt compile per model's repeated blocks (CUDA and torch_tensorrt)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .compile import uncompile
from .registry import AcceleratorConfig, register_accelerator, require_cuda, require_package
from .runtime import Accelerator, RoutedModels

if TYPE_CHECKING:
    import torch

_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}  # torch dtypes, by precision name


@register_accelerator
@dataclass(frozen=True)
class TensorRT(AcceleratorConfig):
    """One torch-tensorrt engine per model's repeated blocks (CUDA and ``torch_tensorrt`` required)."""

    precision: str = "bf16"

    names = ("tensorrt", "trt")
    kind = "engine"
    spec_help = "tensorrt"
    exclusive_with = ("cache", "compile", "memory")

    def create(self) -> TensorRTAccelerator:
        return TensorRTAccelerator(self)

    def __post_init__(self) -> None:
        if self.precision not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"TensorRT.precision={self.precision!r} must be 'bf16', 'fp16' or 'fp32'.")

    def check_environment(self, device: str) -> None:
        require_cuda("tensorrt", device)
        require_package("torch_tensorrt", "tensorrt", "tensorrt")


class TensorRTAccelerator(Accelerator):
    def __init__(self, config) -> None:
        super().__init__(config)
        self._compiled: list[torch.nn.Module] = []

    def check(self, target: RoutedModels, others: list[Accelerator]) -> None:
        self.config.check_environment(str(target.device))

    def apply(self, target: RoutedModels) -> None:
        import torch
        import torch_tensorrt  # noqa: F401  (registers the "tensorrt" dynamo backend)

        options = {
            "enabled_precisions": {getattr(torch, _DTYPES[self.config.precision])},
            "use_python_runtime": False,
        }
        for model in target.models().values():
            repeated = getattr(model, "_repeated_blocks", None) or []
            for block in model.modules():
                if type(block).__name__ in repeated:
                    block.compile(backend="tensorrt", dynamic=False, options=options)
            self._compiled.append(model)

    def remove(self, target: RoutedModels) -> None:
        while self._compiled:
            uncompile(self._compiled.pop())
