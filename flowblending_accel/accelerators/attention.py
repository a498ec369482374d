"""Per-model attention backends (native, flash, sage, xformers ...) through diffusers' AttentionMixin.

diffusers' ``set_attention_backend`` also makes the backend the process's active one, and its reset leaves
each processor with an attribute it did not have; removal here puts both back exactly, so rows without the
backend run as they did before (and compiled graphs, which guard on those attributes, stay valid).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from ..core.diffusers_internals import attention_backend_states, restore_attention_backends
from .runtime import Accelerator, RoutedModels


def _not_the_experimental_note(record: logging.LogRecord) -> bool:
    return "Attention backends are an experimental feature" not in record.getMessage()


@contextmanager
def _without_experimental_note() -> Iterator[None]:
    """diffusers logs that attention backends are experimental on every set and reset; a stack applies and
    removes them every bench round, so the note would fill the log. Other warnings pass."""
    logger = logging.getLogger("diffusers.models.modeling_utils")
    logger.addFilter(_not_the_experimental_note)
    try:
        yield
    finally:
        logger.removeFilter(_not_the_experimental_note)


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

        backends = self.config.backends()
        self._active.enter_context(attention_backend(backends["large"]))  # restores the active one on exit
        self._states = [
            state for model in target.models().values() for state in attention_backend_states(model)
        ]
        with _without_experimental_note():
            for role in ("large", "small"):
                for model in target.models(role).values():
                    model.set_attention_backend(backends[role])

    def remove(self, target: RoutedModels) -> None:
        with _without_experimental_note():
            restore_attention_backends(self._states)
        self._states = []
        self._active.close()
