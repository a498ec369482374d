"""Per-model attention backends (native, flash, sage, xformers ...) through diffusers' AttentionMixin.

diffusers' ``set_attention_backend`` also makes the backend the process's active one, and its reset leaves
each processor with an attribute it did not have; removal here puts both back exactly, so rows without the
backend run as they did before (and compiled graphs, which guard on those attributes, stay valid).
"""

from __future__ import annotations

import importlib.util
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from .registry import AcceleratorConfig, register_accelerator, require_cuda, require_package
from .runtime import Accelerator, RoutedModels

_BACKEND_PACKAGES = {
    "xformers": "xformers",
    "sage": "sageattention",
    "flash": "flash_attn",
    "_flash_3": "flash_attn_interface",
}


@register_accelerator
@dataclass(frozen=True)
class AttentionBackend(AcceleratorConfig):
    """``set_attention_backend`` on every routed model (``small`` defaults to ``large``'s backend)."""

    large: str = "native"
    small: str | None = None

    names = ("attn",)
    kind = "attention"
    spec_help = "attn:<backend>"

    def create(self) -> AttentionBackendAccelerator:
        return AttentionBackendAccelerator(self)

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
                require_package(package, f"attention backend {backend!r} for the {role} model", "xformers")
            if backend != "native":
                require_cuda(f"attention backend {backend!r}", device)


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


# diffusers logs that attention backends are experimental on every set and reset; a stack applies and
# removes them every bench round, so the note would fill the log. Other warnings pass.
EXPERIMENTAL_NOTE = {"diffusers.models.modeling_utils": ("Attention backends are an experimental feature",)}


class AttentionBackendAccelerator(Accelerator):
    def __init__(self, config) -> None:
        super().__init__(config)
        self._states: list[tuple[Any, Any]] = []
        self._active = ExitStack()

    def check(self, target: RoutedModels, others: list[Accelerator]) -> None:
        for label, model in target.models().items():
            if not hasattr(model, "set_attention_backend"):
                raise ValueError(
                    f"attn: the {label} model ({type(model).__name__}) has no set_attention_backend "
                    "(not a diffusers AttentionMixin)."
                )

    def apply(self, target: RoutedModels) -> None:
        from diffusers.models.attention_dispatch import attention_backend

        from ..core import patches
        from ..core.diffusers_internals import attention_backend_states

        backends = self.config.backends()
        self._active.enter_context(attention_backend(backends["large"]))  # restores the active one on exit
        self._states = [
            state for model in target.models().values() for state in attention_backend_states(model)
        ]
        with patches.silenced(EXPERIMENTAL_NOTE):
            for role in ("large", "small"):
                for model in target.models(role).values():
                    model.set_attention_backend(backends[role])

    def remove(self, target: RoutedModels) -> None:
        from ..core import patches
        from ..core.diffusers_internals import restore_attention_backends

        with patches.silenced(EXPERIMENTAL_NOTE):
            restore_attention_backends(self._states)
        self._states = []
        self._active.close()
