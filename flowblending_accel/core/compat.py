"""Can this small model stand in for that large one? Checked before any denoising, with the fix named.

Two kinds of checks: the *pair* (same latent interface and conditioning widths per the family's
``shared_config``; same class where the family needs it) once at apply time, and the *placement* (same
device and dtype) at apply time and again at every run start, since models can be moved in between.
"""

from __future__ import annotations

from typing import Any

import torch

from . import diffusers_internals, diffusers_versions
from .families import Family


def check_pair(large: torch.nn.Module, small: Any, family: Family, where: str, strict: bool = True) -> None:
    """Raise a clear error when ``small`` cannot stand in for ``large`` (``where`` names the attribute)."""
    if small is large:
        raise ValueError(f"small is the same module as {where}; pass a separate, smaller model.")
    if not callable(small):
        raise TypeError(f"small must be a torch module (or callable denoiser), got {type(small).__name__}.")
    large_core, small_core = diffusers_internals.uncompiled(large), diffusers_internals.uncompiled(small)
    if strict and family.same_class and type(small_core) is not type(large_core):
        raise TypeError(
            f"small is a {type(small_core).__name__} but {where} is a {type(large_core).__name__}: the "
            f"{family.name} family needs a small model of the same class. "
            "Pass strict=False to skip this check for a wrapper with the same call signature."
        )
    large_config, small_config = _config(large_core), _config(small_core)
    if large_config is not None and small_config is not None:
        check_configs(large_config, small_config, family, where)


def check_configs(
    large: dict[str, Any], small: dict[str, Any], family: Family, where: str, small_name: str = "small"
) -> None:
    """The family's shared config fields (latent channels, patching, conditioning widths) must match."""
    for field in family.shared_config:
        if field not in large:
            continue
        mine, theirs = _normalise(large.get(field)), _normalise(small.get(field))
        if mine != theirs:
            raise ValueError(
                f"{small_name} config.{field}={theirs!r} but {where} config.{field}={mine!r}: a small model "
                f"must share {', '.join(family.shared_config)} with the large one (same latent space and "
                "conditioning); pick the small model of the same family and version."
            )


def check_context_parallel(
    large: torch.nn.Module, small: Any, family: Family, where: str, config: Any = None
) -> None:
    """When ``large`` runs context-parallel (or is about to, with ``config``), the small model must be able to
    follow it: a context-parallel plan of its own, and a Ulysses degree that divides both head counts."""
    large_core, small_core = diffusers_internals.uncompiled(large), diffusers_internals.uncompiled(small)
    config = config if config is not None else diffusers_internals.context_parallel_of(large_core)
    if config is None or not isinstance(small_core, torch.nn.Module):
        return
    following = f"{where} runs context-parallel; the small model following it"
    diffusers_versions.require("context_parallel", following)
    if diffusers_internals.context_parallel_plan(small_core) is None:
        raise ValueError(
            f"{where} runs context-parallel, but the small model ({type(small_core).__name__}) has no "
            "context-parallel plan (diffusers' _cp_plan), so it cannot follow: pick a small model of a class "
            "diffusers can split (Wan, LTX, Flux ...), or run without context parallelism."
        )
    degree = config.ulysses_degree
    if degree <= 1 or config.ulysses_anything:
        return
    heads = {where: _heads(large_core, family), "small": _heads(small_core, family)}
    uneven = {name: count for name, count in heads.items() if count is not None and count % degree}
    if uneven:
        counts = [count for count in heads.values() if count is not None]
        working = [d for d in range(2, min(counts) + 1) if all(count % d == 0 for count in counts)]
        listed = ", ".join(map(str, working)) or "none above 1"
        name, count = next(iter(uneven.items()))
        raise ValueError(
            f"context parallel: ulysses_degree={degree} does not divide the {name} model's {count} attention "
            f"heads ({', '.join(f'{n}: {c}' for n, c in heads.items())}); Ulysses splits heads across ranks. "
            f"Degrees that divide both: {listed}; or set ulysses_anything=True (pads heads, forward only)."
        )


def _heads(module: torch.nn.Module, family: Family) -> int | None:
    config = _config(module) or {}
    return config.get(family.heads_config)


def _config(module: Any) -> dict | None:
    config = getattr(module, "config", None)
    return dict(config) if config is not None else None


def _normalise(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def device_of(module: Any) -> torch.device | None:
    """Where ``module``'s weights are (its first parameter's device); None for a plain callable or a module
    without parameters. The one such helper: accelerators and tools ask it too."""
    if isinstance(module, torch.nn.Module):
        for parameter in module.parameters():
            return parameter.device
    return None


def dtype_of(module: Any) -> torch.dtype | None:
    if isinstance(module, torch.nn.Module):
        for parameter in module.parameters():
            if parameter.is_floating_point():
                return parameter.dtype
    return None


def compute_dtype_of(module: Any) -> torch.dtype | None:
    """The dtype a module computes in: layerwise casting's compute dtype, else its parameters' dtype."""
    casting = (
        diffusers_internals.layerwise_casting_of(module) if isinstance(module, torch.nn.Module) else None
    )
    return casting[1] if casting else dtype_of(module)


def check_placement(large: Any, small: Any) -> None:
    """Fail before denoising when the pair sits on different devices or dtypes."""
    if not (isinstance(large, torch.nn.Module) and isinstance(small, torch.nn.Module)):
        return
    if hasattr(large, "_hf_hook") or hasattr(small, "_hf_hook"):
        return  # accelerate offload moves weights per call; placement is its business
    large_device, small_device = device_of(large), device_of(small)
    if None not in (large_device, small_device) and large_device != small_device:
        raise ValueError(
            f"small model is on {small_device} but the large model is on {large_device}: "
            f"call `small.to('{large_device}')` (pipe.to() moves only the pipeline's own components)."
        )
    large_dtype, small_dtype = compute_dtype_of(large), compute_dtype_of(small)
    if None not in (large_dtype, small_dtype) and large_dtype != small_dtype:
        raise ValueError(
            f"small model dtype is {small_dtype} but the large model's is {large_dtype}: the pipeline casts "
            f"inputs to the large model's dtype, so call `small.to(dtype={large_dtype})`."
        )


def adapters_in_use(module: Any) -> list[str]:
    """The LoRA (peft) adapters active on ``module`` (none when none are loaded or all are disabled)."""
    if not getattr(module, "_hf_peft_config_loaded", False):
        return []
    tuner_layers = [
        sub for sub in module.modules() if hasattr(sub, "disable_adapters") and hasattr(sub, "scaling")
    ]
    if tuner_layers and all(layer.disable_adapters for layer in tuner_layers):
        return []
    return list(module.active_adapters())


def check_adapters(large: Any, small: Any, where: str) -> None:
    """Refuse, before any denoising, an adapter on the large model that the small one cannot follow."""
    if not (isinstance(large, torch.nn.Module) and isinstance(small, torch.nn.Module)):
        return
    missing = [
        name for name in adapters_in_use(large) if name not in (getattr(small, "peft_config", None) or {})
    ]
    if missing:
        raise ValueError(
            f"{where} has LoRA adapter(s) {missing} that the small model does not have: a small model of "
            "another size cannot take the large model's LoRA weights. Either load a LoRA made for the small "
            "model into it under the same name "
            f"(small.load_lora_adapter(path, adapter_name={missing[0]!r})), or remove FlowBlending while the "
            "adapter is in use (remove_flowblending_(pipe))."
        )
    if (
        getattr(large, "encoder_hid_proj", None) is not None
        and getattr(small, "encoder_hid_proj", None) is None
    ):
        kind = type(large.encoder_hid_proj).__name__
        raise ValueError(
            f"{where} has an IP-Adapter ({kind} in encoder_hid_proj) that the small model does not have: "
            "its image projection and attention processors are made for the large model. Either load an "
            "IP-Adapter made for the small model into it, or remove FlowBlending for IP-Adapter runs "
            "(remove_flowblending_(pipe))."
        )
