"""torchao quantization of every routed model (int8 weight-only, or float8 dynamic activation and weight).

``quantize_`` swaps each linear layer's weight for a quantized tensor subclass; the module, its class and
its hooks stay, so the router, the caches and compile see the same modules.

Quantizing is meant to save memory, so the full-precision weights leave the model's device as each layer
is quantized (one layer at a time: the peak is the model plus one layer, never two copies of it):

* ``full_precision="auto"`` (the default): kept in host memory when the model is on an accelerator, dropped
  when it is on the CPU (a host copy would be the very memory quantizing saves);
* ``"host"``: always kept in host memory (on a CPU: the original tensors, nothing copied);
* ``"device"``: left on the model's device beside the quantized ones (more memory; removing and applying
  again moves nothing: what tools that apply the stack every round use, ``Quantize.for_rounds``);
* ``"drop"``: dropped.

Removal puts kept weights back on the model's device; applying again swaps the quantized ones in without
quantizing again. After a drop, removal leaves the quantized weights and says how to get the full-precision
ones back. A failure while quantizing (out of memory) puts back the layers already done, when kept.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..core import diffusers_versions
from ..core.schedule import FlowBlendingWarning
from .registry import AcceleratorConfig, register_accelerator, require_package
from .runtime import Accelerator, RoutedModels

if TYPE_CHECKING:
    import torch


FLOAT8_CAPABILITY = (8, 9)  # float8 matmuls: Ada and Hopper (sm_89, sm_90) and later


def float8_runs(device: str) -> bool:
    """Whether float8 dynamic quantization runs on ``device`` (a CUDA GPU of compute capability 8.9+)."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(torch.device(device)) >= FLOAT8_CAPABILITY


@register_accelerator
@dataclass(frozen=True)
class Quantize(AcceleratorConfig):
    """torchao quantization of both models' linear layers: ``int8`` weight-only (CPU and GPU), ``float8``
    dynamic activation and weight (GPUs of compute capability 8.9+, e.g. H100), ``auto``: float8 where it
    runs, else int8. ``full_precision``: where the full-precision weights go once quantized (``auto``: host
    memory when the model is on an accelerator, dropped on a CPU; ``host``; ``drop``; ``device``: left beside
    the quantized ones, for tools that apply and remove the stack every round)."""

    mode: str = "auto"
    full_precision: str = "auto"

    names = ("quantize",)
    kind = "quantize"
    spec_help = "quantize[:int8|float8|auto][:host|drop|device] (torchao)"
    exclusive_with = ("tensorrt",)
    clash_reasons = {"tensorrt": "TensorRT builds its engines at its own precision."}
    MODES = ("auto", "int8", "float8")
    KEEPS = ("auto", "host", "drop", "device")

    def create(self) -> QuantizeAccelerator:
        return QuantizeAccelerator(self)

    def __post_init__(self) -> None:
        if self.mode not in self.MODES:
            raise ValueError(f"Quantize.mode={self.mode!r} must be one of {', '.join(self.MODES)}.")
        if self.full_precision not in self.KEEPS:
            raise ValueError(
                f"Quantize.full_precision={self.full_precision!r} must be one of {', '.join(self.KEEPS)}."
            )

    @classmethod
    def from_spec(cls, name: str, value: str) -> Quantize:
        parts = [part for part in value.split(":") if part]
        modes = [part for part in parts if part not in cls.KEEPS or part == "auto"][:1]
        keeps = [part for part in parts if part in cls.KEEPS and part != "auto"]
        if len(parts) > len(modes) + len(keeps):
            raise ValueError(
                f"accelerator 'quantize:{value}': write quantize[:int8|float8|auto][:host|drop|device], e.g. "
                "'quantize:float8:host'."
            )
        return cls(modes[0] if modes else "auto", keeps[0] if keeps else "auto")

    @property
    def spec(self) -> str:
        return f"quantize:{self.mode}" + ("" if self.full_precision == "auto" else f":{self.full_precision}")

    def keeps(self, device: str) -> str:
        """``host``, ``device`` or ``drop``: what becomes of the full-precision weights of a model on
        ``device``."""
        if self.full_precision != "auto":
            return self.full_precision
        return "drop" if device == "cpu" else "host"

    def for_rounds(self) -> Quantize:
        """Kept where they are: a tool that removes and applies the stack every round needs them back at
        once, without moving a model's weights to the host and back each time."""
        return replace(self, full_precision="device")

    def resolved(self, device: str) -> str:
        """The mode that runs on ``device``."""
        if self.mode != "auto":
            return self.mode
        return "float8" if float8_runs(device) else "int8"

    def check_environment(self, device: str) -> None:
        diffusers_versions.require("quantize", self.spec)  # before require_package asks to install torchao
        require_package("torchao", "quantize", "quantize")
        if self.mode == "float8" and not float8_runs(device):
            raise ValueError(
                f"{self.spec} needs a CUDA GPU of compute capability {FLOAT8_CAPABILITY[0]}."
                f"{FLOAT8_CAPABILITY[1]} or later (Ada, Hopper) on --device; use quantize:int8 or "
                "quantize:auto."
            )


# float8 matmuls (torch._scaled_mm) need both dimensions divisible by 16; layers a checkpoint keeps in
# float32 (Wan's time embedding) stay as they are.
FLOAT8_MULTIPLE = 16
FLOAT8_FROM = ("bfloat16", "float16")  # torch dtypes float8 quantizes from
HOST = "cpu"


# torchao logs a warning per prebuilt kernel library this machine cannot load (e.g. CUDA-only kernels on a
# CPU); the Python paths used here do not need them. Silenced (below ERROR) while torchao is imported and
# applied.
TORCHAO_NOTES = {"torchao": ()}


def _quiet_torchao():
    from ..core import patches

    return patches.silenced(TORCHAO_NOTES)


def _torchao_config(mode: str) -> Any:
    with _quiet_torchao():
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Int8WeightOnlyConfig

    # set_inductor_config=False: torchao would otherwise switch on coordinate-descent tuning for the whole
    # process, so every later compile (other bench rows too) tunes each kernel.
    if mode == "float8":
        return Float8DynamicActivationFloat8WeightConfig(set_inductor_config=False)
    return Int8WeightOnlyConfig(set_inductor_config=False)


def _linears(model: torch.nn.Module, mode: str) -> dict[str, torch.nn.Linear]:
    import torch

    found = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    if mode == "float8":
        found = {
            name: m
            for name, m in found.items()
            if m.in_features % FLOAT8_MULTIPLE == 0
            and m.out_features % FLOAT8_MULTIPLE == 0
            and str(m.weight.dtype).removeprefix("torch.") in FLOAT8_FROM
        }
    return found


def device_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer the model holds on its device, quantized weights included."""
    return sum(_nbytes(t) for t in [*model.parameters(), *model.buffers()])


def _put_back(layers: dict[str, torch.nn.Linear], weights: dict[str, tuple], device: torch.device) -> None:
    for name, (original, _) in weights.items():
        if original is not None:
            _move(original, device)
            layers[name].weight = original


def _move(weight: torch.nn.Parameter, device: torch.device | str) -> None:
    """Move a kept weight in place (the same Parameter), as a normal tensor even under inference mode."""
    import torch

    device = torch.device(device)
    if weight.device != device:
        with torch.inference_mode(False):
            weight.data = weight.data.to(device)


def _peak_reset(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    import torch

    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


class QuantizeAccelerator(Accelerator):
    def __init__(self, config) -> None:
        super().__init__(config)
        # id(model) -> (layer name -> (full-precision weight, or None once dropped; quantized weight))
        self._weights: dict[int, dict[str, tuple[torch.nn.Parameter | None, torch.nn.Parameter]]] = {}
        self._devices: dict[int, torch.device] = {}
        self._summary: dict[str, dict[str, Any]] = {}  # label -> mode, layers, bytes, where, peak

    def check(self, target: RoutedModels, others: list[Accelerator]) -> None:
        import torch

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

    def apply(self, target: RoutedModels) -> None:
        for label, model in target.models().items():
            if id(model) not in self._weights:
                self._weights[id(model)] = self._quantize(label, model)
                continue
            modules = dict(model.named_modules())
            keep = self.config.keeps(str(self._devices[id(model)]))
            for name, (original, quantized) in self._weights[id(model)].items():
                modules[name].weight = quantized
                if original is not None and keep == "host":  # back where it waits while quantized ones run
                    _move(original, HOST)

    def _quantize(self, label: str, model: torch.nn.Module) -> dict:
        with _quiet_torchao():
            from torchao.quantization import quantize_

        device = _weights_device(model)
        mode, keep = self.config.resolved(str(device)), self.config.keeps(str(device))
        layers = _linears(model, mode)
        before, full_bytes = device_bytes(model), sum(_nbytes(layer.weight) for layer in layers.values())
        _peak_reset(device)
        weights: dict[str, tuple] = {}
        config = _torchao_config(mode)
        try:
            for (
                name,
                layer,
            ) in layers.items():  # a layer at a time: never two copies of the model on the device
                original, attributes = layer.weight, set(vars(layer))
                with _quiet_torchao():
                    quantize_(layer, config)
                for added in set(vars(layer)) - attributes:  # e.g. an extra_repr: compiled graphs guard on it
                    delattr(layer, added)
                if keep == "host":
                    _move(original, HOST)
                weights[name] = (None if keep == "drop" else original, layer.weight)
        except BaseException:
            _put_back(layers, weights, device)  # half-quantized models do not stay behind
            raise
        self._devices[id(model)] = device
        self._summary[label] = {
            "mode": mode,
            "layers": len(layers),
            "full_precision": {"host": "host", "device": "device", "drop": "dropped"}[keep],
            "device_weight_bytes_before": before,
            "device_weight_bytes_after": device_bytes(model),
            "host_bytes_kept": full_bytes if keep == "host" else 0,
            "peak_memory_bytes_quantizing": _peak(device),
        }
        return weights

    def remove(self, target: RoutedModels) -> None:
        dropped = []
        for label, model in target.models().items():
            modules = dict(model.named_modules())
            device = self._devices.get(id(model), _weights_device(model))
            for name, (original, _) in self._weights.get(id(model), {}).items():
                if original is None:
                    dropped.append(label)
                    continue
                _move(original, device)
                modules[name].weight = original
        if dropped:
            warnings.warn(self._dropped_message(sorted(set(dropped))), FlowBlendingWarning, stacklevel=3)

    def _dropped_message(self, labels: list[str]) -> str:
        return (
            f"quantize: removed, but the {' and '.join(labels)} model(s) keep their quantized weights: the "
            "full-precision ones were dropped when quantized, to save memory (full_precision='drop', the "
            "default on a CPU). To get them back, load the models again (from_pretrained); to keep a host "
            f"copy that removal puts back, quantize with Quantize({self.config.mode!r}, "
            f"full_precision='host') or the spec 'quantize:{self.config.mode}:host'."
        )

    def counters(self) -> dict[str, Any]:
        return {
            f"{label}.{key}": value
            for label, summary in self._summary.items()
            for key, value in summary.items()
        }


def _weights_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s weights are (the host for a model without any)."""
    import torch

    from ..core.compat import device_of

    return device_of(model) or torch.device("cpu")


def _nbytes(weight: torch.Tensor) -> int:
    """Storage of a weight, quantized subclasses included (their inner tensors)."""
    import torch

    if type(weight) in (torch.Tensor, torch.nn.Parameter):
        return weight.numel() * weight.element_size()
    names, _ = weight.__tensor_flatten__()
    return sum(_nbytes(getattr(weight, name)) for name in names)
