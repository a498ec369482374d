"""A target from your own code: ``--target path/to/file.py:make`` or ``--target package.module:make``.

The factory builds the pipeline the way you run it (your LoRA, scheduler, offload, compile) and returns::

    def make(device="cuda", dtype=torch.bfloat16):
        pipe = WanPipeline.from_pretrained(..., dtype=dtype).to(device)
        small = WanTransformer3DModel.from_pretrained(..., dtype=dtype).to(device)
        return {
            "pipe": pipe,
            "small": small,                               # or {"transformer": s1, "transformer_2": s2}
            "call": {"height": 480, "width": 832, "num_frames": 81, "num_inference_steps": 40},
            "prompts": ["A cat on the moon", {"prompt": "A dog", "negative_prompt": "blurry"}],  # optional
        }

``device`` and ``dtype`` are passed when the factory takes them. The factory is found (imported) before
anything is built; what it returns is checked right after it returns.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .base import Target
from .prompts import Prompt

FACTORY_KEYS = ("pipe", "small", "call", "prompts", "batch")


def find_factory(spec: str) -> Callable:
    """``file.py:name`` or ``module:name`` imported and looked up; refused with the reason otherwise."""
    location, _, name = spec.rpartition(":")
    if not location or not name:
        raise ValueError(f"--target {spec!r}: write FILE.py:FACTORY or MODULE:FACTORY.")
    if location.endswith(".py"):
        path = Path(location)
        if not path.is_file():
            raise ValueError(f"--target {spec}: {path} is not a file.")
        module_spec = importlib.util.spec_from_file_location(f"flowblending_target_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as error:
            raise ValueError(f"--target {spec}: cannot import {location} ({error}).") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ValueError(f"--target {spec}: {location} has no callable {name!r}.")
    return factory


def factory_target(
    spec: str, device: str, dtype: torch.dtype, base: dict[str, Any], prompts: list[Prompt] | None
) -> Target:
    """Call the factory and build the target; ``base``/``prompts`` (command line) override its own."""
    factory = find_factory(spec)
    accepted = inspect.signature(factory).parameters
    built = factory(**{k: v for k, v in {"device": device, "dtype": dtype}.items() if k in accepted})
    made = _as_dict(spec, built)
    unknown = sorted(set(made) - set(FACTORY_KEYS))
    if unknown:
        raise ValueError(f"--target {spec}: the factory returned unknown keys {unknown}; use {FACTORY_KEYS}.")
    own_prompts = [_prompt(spec, entry) for entry in made.get("prompts") or []]
    chosen = prompts or own_prompts
    if not chosen:
        raise ValueError(f'--target {spec}: no prompts: return "prompts" from the factory or pass --prompts.')
    pipe = made["pipe"]
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return Target(
        spec,
        pipe,
        made["small"],
        device,
        f"{type(pipe).__name__} from {spec}",
        {**dict(made.get("call") or {}), **base},
        chosen,
        batch=made.get("batch", 1),
    )


def _as_dict(spec: str, built: Any) -> dict[str, Any]:
    if isinstance(built, tuple) and len(built) in (2, 3):
        built = dict(zip(("pipe", "small", "call"), built, strict=False))
    if not isinstance(built, dict) or "pipe" not in built or "small" not in built:
        raise ValueError(
            f'--target {spec}: the factory must return {{"pipe": ..., "small": ...}} (and '
            f'optionally "call", "prompts"), got {type(built).__name__}.'
        )
    if not callable(built["pipe"]) or not hasattr(built["pipe"], "scheduler"):
        raise ValueError(
            f'--target {spec}: "pipe" is a {type(built["pipe"]).__name__}, not a diffusers pipeline.'
        )
    return built


def _prompt(spec: str, entry: Any) -> Prompt:
    if isinstance(entry, str):
        return Prompt(entry)
    if isinstance(entry, dict) and isinstance(entry.get("prompt"), str):
        return Prompt(entry["prompt"], {k: v for k, v in entry.items() if k != "prompt"})
    raise ValueError(f'--target {spec}: a prompt is a string or {{"prompt": ..., ...}}, got {entry!r}.')
