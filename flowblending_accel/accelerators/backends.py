"""Per-model attention backends (native, flash, sage, xformers ...) and TensorRT engines (GPU only)."""

from __future__ import annotations

from typing import Any

import torch

from .base import Accelerator, Pair

_BACKEND_NEEDS = {"xformers": "xformers", "sage": "sageattention", "flash": "flash_attn", "_flash_3": "flash_attn_interface"}


class AttentionBackend(Accelerator):
    """``model.set_attention_backend(name)`` on both models (or a different one per model)."""

    kind = "attention"
    stage = "attention"

    def __init__(self, large: str = "native", small: str | None = None) -> None:
        self.backends = {"large": large, "small": small or large}

    def check(self, pair: Pair, others: list[Accelerator]) -> None:
        import importlib.util

        for name, backend in self.backends.items():
            module = _BACKEND_NEEDS.get(backend)
            if module and importlib.util.find_spec(module) is None:
                raise ValueError(f"attention backend {backend!r} for the {name} model needs the `{module}` package; "
                                 "install it (CUDA only) or use 'native'.")
            if backend != "native" and not torch.cuda.is_available():
                raise ValueError(f"attention backend {backend!r} runs on CUDA only; use 'native' on this machine.")
            if not hasattr(pair.models()[name], "set_attention_backend"):
                raise ValueError(f"the {name} model has no set_attention_backend (not a diffusers AttentionMixin).")

    def apply(self, pair: Pair) -> None:
        for name, model in pair.models().items():
            model.set_attention_backend(self.backends[name])

    def remove(self, pair: Pair) -> None:
        for model in pair.models().values():
            model.reset_attention_backend()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.backends}


class TensorRTEngines(Accelerator):
    """One torch-tensorrt engine per model's repeated blocks; CUDA and ``torch_tensorrt`` required."""

    kind = "tensorrt"
    stage = "engine"
    exclusive_with = ("fbc", "magcache", "taylorseer", "pab", "seacache", "deepcache", "cache-dit", "compile")

    def __init__(self, precision: str = "bf16") -> None:
        self.precision = precision
        self._compiled: list[torch.nn.Module] = []

    def check(self, pair: Pair, others: list[Accelerator]) -> None:
        import importlib.util

        if not torch.cuda.is_available():
            raise ValueError("tensorrt: TensorRT engines need a CUDA GPU; this machine has none. Drop it from the stack.")
        if importlib.util.find_spec("torch_tensorrt") is None:
            raise ValueError("tensorrt: install flowblending-accel[tensorrt] (torch-tensorrt).")

    def apply(self, pair: Pair) -> None:
        import torch_tensorrt  # noqa: F401  (registers the "tensorrt" dynamo backend)

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.precision]
        for model in pair.models().values():
            for block in model.modules():
                if type(block).__name__ in (getattr(model, "_repeated_blocks", None) or []):
                    block.compile(backend="tensorrt", dynamic=False,
                                  options={"enabled_precisions": {dtype}, "use_python_runtime": False})
            self._compiled.append(model)

    def remove(self, pair: Pair) -> None:
        for model in self._compiled:
            for block in model.modules():
                if getattr(block, "_compiled_call_impl", None) is not None:
                    block._compiled_call_impl = None
        self._compiled.clear()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "precision": self.precision}
