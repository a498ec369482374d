"""torchao quantization of every routed model (int8 weight-only, or float8 dynamic activation and weight).

``quantize_`` swaps each linear layer's weight for a quantized tensor subclass; the module, its class and
its hooks stay, so the router, the caches and compile see the same modules. The first application
quantizes; the accelerator keeps both weight sets, so removing it puts the full-precision weights back and
applying it again (every bench round) swaps the quantized ones in without quantizing again.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any

import torch

from .runtime import Accelerator, StackTarget

# float8 matmuls (torch._scaled_mm) need both dimensions divisible by 16; layers a checkpoint keeps in
# float32 (Wan's time embedding) stay as they are.
FLOAT8_MULTIPLE = 16
FLOAT8_FROM = (torch.bfloat16, torch.float16)


@contextmanager
def _quiet_torchao():
    """torchao logs a warning per prebuilt kernel library this machine cannot load (e.g. CUDA-only
    kernels on a CPU); the Python paths used here do not need them."""
    logger = logging.getLogger("torchao")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _torchao_config(mode: str) -> Any:
    with _quiet_torchao():
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Int8WeightOnlyConfig

    if mode == "float8":
        return Float8DynamicActivationFloat8WeightConfig()
    return Int8WeightOnlyConfig()


def _linears(model: torch.nn.Module, mode: str) -> dict[str, torch.nn.Linear]:
    found = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    if mode == "float8":
        found = {
            name: m
            for name, m in found.items()
            if m.in_features % FLOAT8_MULTIPLE == 0
            and m.out_features % FLOAT8_MULTIPLE == 0
            and m.weight.dtype in FLOAT8_FROM
        }
    return found


class QuantizeAccelerator(Accelerator):
    def __init__(self, config) -> None:
        super().__init__(config)
        # id(model) -> (layer name -> (full-precision weight, quantized weight))
        self._weights: dict[int, dict[str, tuple[torch.nn.Parameter, torch.nn.Parameter]]] = {}
        self._summary: dict[str, dict[str, Any]] = {}  # label -> mode, layers, weight bytes before/after

    def check(self, target: StackTarget, others: list[Accelerator]) -> None:
        self.config.check_environment(str(target.device or "cpu"))
        for label, model in target.models().items():
            if id(model) in self._weights:
                continue
            if not _linears(model, self.config.resolved(str(target.device or "cpu"))):
                raise ValueError(
                    f"quantize: the {label} model ({type(model).__name__}) has no linear layers."
                )
            if any(type(p) is not torch.nn.Parameter for p in model.parameters()):
                raise ValueError(
                    f"quantize: the {label} model already holds quantized or wrapped weights; load it in "
                    "full precision, or drop quantize from the stack."
                )

    def apply(self, target: StackTarget) -> None:
        for label, model in target.models().items():
            layers = _linears(model, self.config.resolved(str(_device_of(model))))
            if id(model) not in self._weights:
                self._weights[id(model)] = self._quantize(label, model, layers)
            for name, (_, quantized) in self._weights[id(model)].items():
                layers[name].weight = quantized

    def _quantize(self, label: str, model: torch.nn.Module, layers: dict[str, torch.nn.Linear]) -> dict:
        with _quiet_torchao():
            from torchao.quantization import quantize_

        mode = self.config.resolved(str(_device_of(model)))
        originals = {name: layer.weight for name, layer in layers.items()}
        attributes = {name: set(vars(layer)) for name, layer in layers.items()}
        chosen = set(map(id, layers.values()))
        with _quiet_torchao():
            quantize_(model, _torchao_config(mode), filter_fn=lambda module, _: id(module) in chosen)
        quantized = {name: layer.weight for name, layer in layers.items()}
        for name, layer in layers.items():  # e.g. an extra_repr: compiled graphs guard on the module's dict
            for added in set(vars(layer)) - attributes[name]:
                delattr(layer, added)
        self._summary[label] = {
            "mode": mode,
            "layers": len(layers),
            "weight_bytes_before": sum(_nbytes(w) for w in originals.values()),
            "weight_bytes_after": sum(_nbytes(w) for w in quantized.values()),
        }
        return {name: (originals[name], quantized[name]) for name in layers}

    def remove(self, target: StackTarget) -> None:
        for model in target.models().values():
            modules = dict(model.named_modules())
            for name, (original, _) in self._weights.get(id(model), {}).items():
                modules[name].weight = original

    def counters(self) -> dict[str, Any]:
        return {
            f"{label}.{key}": value
            for label, summary in self._summary.items()
            for key, value in summary.items()
        }


def _device_of(model: torch.nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _nbytes(weight: torch.Tensor) -> int:
    """Storage of a weight, quantized subclasses included (their inner tensors)."""
    if type(weight) in (torch.Tensor, torch.nn.Parameter):
        return weight.numel() * weight.element_size()
    names, _ = weight.__tensor_flatten__()
    return sum(_nbytes(getattr(weight, name)) for name in names)
