"""The built-in accelerator configs: one frozen dataclass each, validated in ``__post_init__``, registered
under their spec names. Applying one is :func:`~flowblending_accel.accelerators.apply_stack`'s job; these
only say what to apply (torchao style: ``quantize_(model, Int8WeightOnlyConfig())``).

=========================================  =====================================================
spec                                       config
=========================================  =====================================================
``dpm++:25``, ``unipc:20``, ``euler:30``    ``StepReduction(solver, steps)``
``fbc:0.05``                               ``FirstBlockCache(threshold=0.05)``
``taylorseer``, ``pab``, ``seacache``      ``TaylorSeer()``, ``PyramidAttentionBroadcast()``, ``SeaCache()``
``magcache:calibrate``                     ``MagCache(calibrate=True)`` (or ``mag_ratios=...``)
``deepcache:3``                            ``DeepCache(interval=3)`` (UNets)
``cache-dit``                              ``CacheDiT()``
``compile``                                ``RegionalCompile()``
``attn:flash``                             ``AttentionBackend("flash")``
``quantize:int8``, ``quantize:float8``       ``Quantize("int8")`` (torchao; ``auto``: float8 where it runs)
``tensorrt``                               ``TensorRT()``
``offload:1``                              ``OffloadInactive(prefetch_steps=1)``
=========================================  =====================================================
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from ..core.named_schedulers import FLOW_SCHEDULERS, SCHEDULER_NAMES
from .registry import AcceleratorConfig, register_accelerator

_BACKEND_PACKAGES = {
    "xformers": "xformers",
    "sage": "sageattention",
    "flash": "flash_attn",
    "_flash_3": "flash_attn_interface",
}


# Memory modes for a pipeline loaded on the CPU (``enable_offload``): every component resident, diffusers'
# model, group and sequential CPU offload.
OFFLOAD_MODES = ("none", "model", "group", "sequential")

# Fastest first, as measured by their authors on Hopper; the native cuDNN SDPA backend ships with torch.
_BACKEND_PREFERENCE = ("_flash_3", "flash", "sage", "_native_cudnn")


def best_attention_backend(device: str) -> str:
    """The fastest attention backend that runs on ``device`` here (``native`` off CUDA): the first of the
    preferred ones whose package is installed and which answers a tiny attention call on the device."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return "native"
    for backend in _BACKEND_PREFERENCE:
        package = _BACKEND_PACKAGES.get(backend)
        if (package is None or importlib.util.find_spec(package) is not None) and _backend_runs(
            backend, device
        ):
            return backend
    return "native"


def _backend_runs(backend: str, device: str) -> bool:
    """One tiny bf16 attention call through diffusers' dispatcher: a kernel that is installed but does not run
    on this GPU (or this torch) is found here, not in the middle of a measurement."""
    import torch
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    try:
        query = torch.randn(1, 64, 2, 64, device=device, dtype=torch.bfloat16)  # (batch, tokens, heads, dim)
        dispatch_attention_fn(query, query, query, backend=AttentionBackendName(backend))
        torch.cuda.synchronize(device)
    except Exception:  # any failure means: not this backend
        return False
    return True


def _value(name: str, value: str, cast: type, form: str) -> Any:
    try:
        return cast(value)
    except ValueError:
        raise ValueError(
            f"accelerator '{name}:{value}': the value must be {form}, e.g. '{name}:"
            f"{'0.05' if cast is float else '10'}'."
        ) from None


def _needs_package(module: str, what: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"{what} needs the `{module}` package: pip install flowblending-accel[{extra}].")


def _needs_cuda(what: str, device: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise ValueError(
            f"{what} needs a CUDA GPU, and this machine has none (torch {torch.__version__}): "
            "drop it from the stack."
        )
    if not device.startswith("cuda"):
        raise ValueError(f"{what} needs a CUDA GPU, but the target runs on {device!r}: use --device cuda.")


def _needs_transformers(spec: str, family, denoisers: tuple[str, ...]) -> None:
    unets = [name for name in denoisers if family.is_unet(name)]
    if unets:
        raise ValueError(
            f"{spec}: the {family.name} pipeline's {unets[0]} is a UNet, which this cache does not hook "
            "(it caches transformer blocks); use deepcache[:interval]."
        )


@register_accelerator
@dataclass(frozen=True)
class StepReduction(AcceleratorConfig):
    """Swap the pipeline's scheduler for ``solver`` at ``steps`` solver steps (flow settings kept)."""

    solver: str = "dpm++"
    steps: int = 25
    shift: float | None = None

    names = SCHEDULER_NAMES
    kind = "scheduler"
    spec_help = "dpm++:25 | unipc:20 | euler:30 | heun:25 (step reduction)"
    implementation = ".steps:StepReductionAccelerator"

    def __post_init__(self) -> None:
        if self.solver not in SCHEDULER_NAMES:
            raise ValueError(
                f"StepReduction.solver={self.solver!r} is unknown; "
                f"choose one of {', '.join(SCHEDULER_NAMES)}."
            )
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"StepReduction.steps={self.steps!r} must be a whole number of at least 1.")

    @property
    def name(self) -> str:
        return self.solver

    @classmethod
    def from_spec(cls, name: str, value: str) -> StepReduction:
        return cls(name, _value(name, value, int, "a whole number of steps") if value else 25)

    @property
    def spec(self) -> str:
        return f"{self.solver}:{self.steps}"

    def check_family(self, family, denoisers, solver_kind=None) -> None:
        from ..core.named_schedulers import takes_sigmas

        kind = family.solver_kind or solver_kind
        if kind is not None and (kind == "flow") != (self.solver in FLOW_SCHEDULERS):
            named = "flow-matching" if kind == "flow" else "diffusion (epsilon / v)"
            fitting = [name for name in SCHEDULER_NAMES if (name in FLOW_SCHEDULERS) == (kind == "flow")]
            raise ValueError(
                f"{self.spec}: {self.solver!r} does not fit the {family.name} pipeline's {named} "
                f"checkpoints; pick one of {', '.join(fitting)}."
            )
        if family.passes_sigmas and not takes_sigmas(self.solver):
            raise ValueError(
                f"{self.spec}: the {family.name} pipeline hands the scheduler its own sigma grid, which "
                f"{self.solver!r} does not take; use euler or unipc."
            )


@dataclass(frozen=True)
class _DiffusersCache(AcceleratorConfig):
    """A diffusers feature cache on every routed model; ``options`` go to its diffusers config."""

    options: Mapping[str, Any] = field(default_factory=dict, kw_only=True)

    kind = "cache"
    implementation = ".caches:DiffusersCacheAccelerator"
    exclusive_with = ("tensorrt",)
    # Skips a call's remaining blocks as a whole (the runtime counts those skips per model).
    skips_tail: ClassVar[bool] = False
    # Its per-model state is indexed by the loop iteration (the runtime aligns it with the run's).
    iteration_indexed: ClassVar[bool] = False

    def check_family(self, family, denoisers, solver_kind=None) -> None:
        _needs_transformers(self.spec, family, denoisers)

    def diffusers_config(self, models: Any, ratios: Any = None) -> Any:
        """The diffusers cache config this declares for ``models`` (the routed pipeline); ``ratios``: the
        model's MagCache ratios. diffusers is imported here, not with the registry."""
        raise NotImplementedError


@register_accelerator
@dataclass(frozen=True)
class FirstBlockCache(_DiffusersCache):
    """diffusers' FirstBlockCache: skip the tail of the model while the first block's residual changes
    less than ``threshold``."""

    threshold: float = 0.05

    names = ("fbc",)
    spec_help = "fbc[:threshold]"

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise ValueError(f"FirstBlockCache.threshold={self.threshold!r} must be positive, e.g. 0.05.")

    @classmethod
    def from_spec(cls, name: str, value: str) -> FirstBlockCache:
        return cls(threshold=_value(name, value, float, "a positive threshold") if value else 0.05)

    @property
    def spec(self) -> str:
        return f"fbc:{self.threshold:g}"

    skips_tail = True

    def diffusers_config(self, models: Any, ratios: Any = None) -> Any:
        import diffusers

        return diffusers.FirstBlockCacheConfig(threshold=self.threshold, **self.options)


@register_accelerator
@dataclass(frozen=True)
class TaylorSeer(_DiffusersCache):
    names = ("taylorseer",)
    spec_help = "taylorseer"

    def diffusers_config(self, models: Any, ratios: Any = None) -> Any:
        import diffusers
        import torch

        pattern = models.family.attention_blocks
        defaults = {
            "taylor_factors_dtype": torch.float32,
            **({"cache_identifiers": [pattern]} if pattern else {}),
        }
        return diffusers.TaylorSeerCacheConfig(**{**defaults, **self.options})


@register_accelerator
@dataclass(frozen=True)
class PyramidAttentionBroadcast(_DiffusersCache):
    names = ("pab",)
    spec_help = "pab"

    def diffusers_config(self, models: Any, ratios: Any = None) -> Any:
        import diffusers

        pipe = models.pipe
        defaults = {
            "spatial_attention_block_skip_range": 2,
            "current_timestep_callback": lambda: pipe.current_timestep,
        }
        return diffusers.PyramidAttentionBroadcastConfig(**{**defaults, **self.options})


@register_accelerator
@dataclass(frozen=True)
class SeaCache(_DiffusersCache):
    names = ("seacache",)
    spec_help = "seacache"

    def diffusers_config(self, models: Any, ratios: Any = None) -> Any:
        import diffusers

        return diffusers.SeaCacheConfig(**self.options)


@register_accelerator
@dataclass(frozen=True)
class MagCache(_DiffusersCache):
    """MagCache needs per-model magnitude ratios indexed by loop iteration: give ``mag_ratios={"large": [...],
    "small": [...]}`` (see ``calibrate_mag_ratios``) or ``calibrate=True`` to record them."""

    mag_ratios: Mapping[str, Any] | None = None
    calibrate: bool = False

    names = ("magcache",)
    spec_help = "magcache:calibrate"

    def __post_init__(self) -> None:
        if not self.calibrate and not self.mag_ratios:
            raise ValueError(
                "MagCache needs mag_ratios per model: pass mag_ratios={'large': [...], 'small': [...]} "
                "(see calibrate_mag_ratios) and num_inference_steps in options, or calibrate=True."
            )

    @classmethod
    def from_spec(cls, name: str, value: str) -> MagCache:
        if value != "calibrate":
            raise ValueError(
                f"accelerator '{name}:{value}': write 'magcache:calibrate' (ratios come from Python)."
            )
        return cls(calibrate=True)

    @property
    def spec(self) -> str:
        return "magcache:calibrate" if self.calibrate else "magcache"

    skips_tail = True
    iteration_indexed = True

    def diffusers_config(self, models: Any, ratios: Any = None) -> Any:
        import diffusers

        calibrating = {"calibrate": True} if self.calibrate else {}
        return diffusers.MagCacheConfig(**{**self.options, **calibrating, "mag_ratios": ratios})


@register_accelerator
@dataclass(frozen=True)
class DeepCache(AcceleratorConfig):
    """DeepCache on both UNets: recompute the deep blocks every ``interval`` steps, reuse them in between."""

    interval: int = 3
    branch_id: int = 0

    names = ("deepcache",)
    kind = "cache"
    spec_help = "deepcache[:interval] (UNets)"
    implementation = ".deepcache:DeepCacheAccelerator"
    exclusive_with = ("tensorrt", "compile")
    clash_reasons = {"compile": "DeepCache swaps block forwards in Python at every step."}

    def __post_init__(self) -> None:
        if not isinstance(self.interval, int) or self.interval < 1:
            raise ValueError(f"DeepCache.interval={self.interval!r} must be a whole number of at least 1.")

    @classmethod
    def from_spec(cls, name: str, value: str) -> DeepCache:
        return cls(_value(name, value, int, "a whole-number interval") if value else 3)

    @property
    def spec(self) -> str:
        return f"deepcache:{self.interval}"

    def check_environment(self, device: str) -> None:
        _needs_package("DeepCache", "deepcache", "deepcache")

    def check_family(self, family, denoisers, solver_kind=None) -> None:
        others = [name for name in denoisers if not family.is_unet(name)]
        if others:
            raise ValueError(
                f"{self.spec}: the {family.name} pipeline's denoiser ({others[0]}) is not a UNet; DeepCache "
                "works on UNets only: use fbc, taylorseer or cache-dit."
            )


@register_accelerator
@dataclass(frozen=True)
class CacheDiT(AcceleratorConfig):
    """cache-dit's DBCache on both transformers; ``options`` go to its ``DBCacheConfig``."""

    options: Mapping[str, Any] = field(default_factory=dict)

    names = ("cache-dit",)
    kind = "cache"
    spec_help = "cache-dit"
    implementation = ".cachedit:CacheDiTAccelerator"
    exclusive_with = ("tensorrt",)

    def check_environment(self, device: str) -> None:
        _needs_package("cache_dit", "cache-dit", "cache-dit")

    def check_family(self, family, denoisers, solver_kind=None) -> None:
        _needs_transformers(self.spec, family, denoisers)


@register_accelerator
@dataclass(frozen=True)
class RegionalCompile(AcceleratorConfig):
    """``torch.compile`` of both models' repeated blocks (the router stays eager)."""

    fullgraph: bool | None = None
    mode: str | None = None

    names = ("compile",)
    kind = "compile"
    spec_help = "compile"
    implementation = ".compile:RegionalCompileAccelerator"
    exclusive_with = ("tensorrt",)


@register_accelerator
@dataclass(frozen=True)
class AttentionBackend(AcceleratorConfig):
    """``set_attention_backend`` on every routed model (``small`` defaults to ``large``'s backend)."""

    large: str = "native"
    small: str | None = None

    names = ("attn",)
    kind = "attention"
    spec_help = "attn:<backend>"
    implementation = ".attention:AttentionBackendAccelerator"

    def __post_init__(self) -> None:
        if not self.large:
            raise ValueError("AttentionBackend.large must name a backend, e.g. 'native', 'flash', 'sage'.")

    @classmethod
    def from_spec(cls, name: str, value: str) -> AttentionBackend:
        return cls(value or "native")

    @property
    def spec(self) -> str:
        return f"attn:{self.large}"

    def backends(self) -> dict[str, str]:
        return {"large": self.large, "small": self.small or self.large}

    def check_environment(self, device: str) -> None:
        for role, backend in self.backends().items():
            package = _BACKEND_PACKAGES.get(backend)
            if package:
                _needs_package(package, f"attention backend {backend!r} for the {role} model", "xformers")
            if backend != "native":
                _needs_cuda(f"attention backend {backend!r}", device)


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
    implementation = ".quantize:QuantizeAccelerator"
    exclusive_with = ("tensorrt",)
    clash_reasons = {"tensorrt": "TensorRT builds its engines at its own precision."}
    MODES = ("auto", "int8", "float8")
    KEEPS = ("auto", "host", "drop", "device")

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
        _needs_package("torchao", "quantize", "quantize")
        if self.mode == "float8" and not float8_runs(device):
            raise ValueError(
                f"{self.spec} needs a CUDA GPU of compute capability {FLOAT8_CAPABILITY[0]}."
                f"{FLOAT8_CAPABILITY[1]} or later (Ada, Hopper) on --device; use quantize:int8 or "
                "quantize:auto."
            )


@register_accelerator
@dataclass(frozen=True)
class TensorRT(AcceleratorConfig):
    """One torch-tensorrt engine per model's repeated blocks (CUDA and ``torch_tensorrt`` required)."""

    precision: str = "bf16"

    names = ("tensorrt", "trt")
    kind = "engine"
    spec_help = "tensorrt"
    implementation = ".tensorrt:TensorRTAccelerator"
    exclusive_with = ("cache", "compile", "memory")

    def __post_init__(self) -> None:
        if self.precision not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"TensorRT.precision={self.precision!r} must be 'bf16', 'fp16' or 'fp32'.")

    def check_environment(self, device: str) -> None:
        _needs_cuda("tensorrt", device)
        _needs_package("torch_tensorrt", "tensorrt", "tensorrt")


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
    implementation = ".offload:OffloadAccelerator"

    def __post_init__(self) -> None:
        if not isinstance(self.prefetch_steps, int) or self.prefetch_steps < 0:
            raise ValueError(
                f"OffloadInactive.prefetch_steps={self.prefetch_steps!r} must be a whole number >= 0."
            )

    @classmethod
    def from_spec(cls, name: str, value: str) -> OffloadInactive:
        return cls(_value(name, value, int, "a whole number of steps") if value else 1)

    @property
    def spec(self) -> str:
        return f"offload:{self.prefetch_steps}"


# The solvers a step reduction tries for a family, fastest-converging first, by what the family samples with.
SOLVER_PREFERENCE = {"flow": ("dpm++", "unipc", "euler"), "vp": ("dpm++-vp", "euler-vp", "ddim")}
CACHE_PREFERENCE = ("fbc:0.05", "deepcache:3")  # transformers take FirstBlockCache, UNets DeepCache


def solver_for_family(family, denoisers: tuple[str, ...], solver_kind: str | None = None) -> str | None:
    """The first step-reduction solver the family takes (LTX hands the scheduler its own sigmas, so no
    DPM++), or None."""
    kind = family.solver_kind or solver_kind or "flow"
    for name in SOLVER_PREFERENCE[kind]:
        try:
            StepReduction(name, 2).check_family(family, denoisers, solver_kind)
        except ValueError:
            continue
        return name
    return None


def default_stack(family, denoisers: tuple[str, ...], steps: int, device: str) -> list[AcceleratorConfig]:
    """The stack ``bench`` measures when none is given: a solver the family takes at half the steps, a cache
    it takes (and this machine has), and regional compile. Never a member the family or machine refuses."""
    from .registry import parse_accelerator

    specs = []
    solver = solver_for_family(family, denoisers)
    if solver is not None:
        specs.append(f"{solver}:{max(2, steps // 2)}")
    for spec in CACHE_PREFERENCE:
        config = parse_accelerator(spec)
        try:
            config.check_family(family, denoisers)
            config.check_environment(device)
        except ValueError:
            continue
        specs.append(spec)
        break
    return [parse_accelerator(spec) for spec in [*specs, "compile"]]
