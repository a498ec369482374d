"""A target: what a tool runs on (a pipeline, its small model, call arguments per seed, how to read the
output)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..families import family_for


@dataclass
class Target:
    name: str
    pipe: Any
    small: torch.nn.Module
    call_kwargs: Callable[[int], dict[str, Any]]
    output_field: str
    quality: bool  # False for random weights: outputs are noise
    device: str
    description: str

    @property
    def large(self) -> torch.nn.Module:
        """The pipeline's (first) routed denoiser."""
        return getattr(self.pipe, family_for(self.pipe).present_denoisers(self.pipe)[0])

    def output(self, result: Any) -> Any:
        """The generated frames or images of a pipeline call's ``result``."""
        return getattr(result, self.output_field)
