"""TensorRT engines: one torch-tensorrt compile per model's repeated blocks (CUDA and torch_tensorrt)."""

from __future__ import annotations

import torch

from .compile import uncompile
from .runtime import Accelerator, RoutedModels

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class TensorRTAccelerator(Accelerator):
    def __init__(self, config) -> None:
        super().__init__(config)
        self._compiled: list[torch.nn.Module] = []

    def check(self, target: RoutedModels, others: list[Accelerator]) -> None:
        self.config.check_environment(str(target.device))

    def apply(self, target: RoutedModels) -> None:
        import torch_tensorrt  # noqa: F401  (registers the "tensorrt" dynamo backend)

        options = {"enabled_precisions": {_DTYPES[self.config.precision]}, "use_python_runtime": False}
        for model in target.models().values():
            repeated = getattr(model, "_repeated_blocks", None) or []
            for block in model.modules():
                if type(block).__name__ in repeated:
                    block.compile(backend="tensorrt", dynamic=False, options=options)
            self._compiled.append(model)

    def remove(self, target: RoutedModels) -> None:
        while self._compiled:
            uncompile(self._compiled.pop())
