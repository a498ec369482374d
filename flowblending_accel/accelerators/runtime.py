"""What a stack acts on, and the contract of an applied accelerator.

A :class:`RoutedModels` is the pipeline with the denoisers FlowBlending routes (the families registry says
which: Wan 2.2 has two experts) and the small model of each; every accelerator acts on all of those
modules. An :class:`Accelerator` is the runtime side of one config: ``check`` (before anything changes),
``apply`` / ``remove``, the router's events (it is a
:class:`~flowblending_accel.core.listeners.RouterListener`, so per-model state follows the trajectory's
segments), and ``counters`` of what it did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.listeners import RouterListener
from .registry import AcceleratorConfig

if TYPE_CHECKING:  # the registry imports this module: torch and diffusers load when a stack is applied
    import torch

    from ..core.families import Family


@dataclass
class RoutedModels:
    """The pipeline and, per routed denoiser attribute, its large and small model."""

    pipe: Any
    family: Family
    larges: dict[str, torch.nn.Module]
    smalls: dict[str, Any]
    device: torch.device | None = field(default=None)

    @classmethod
    def of(cls, pipe: Any, small: Any, denoisers: tuple[str, ...] | None = None) -> RoutedModels:
        from ..core.api import routed_denoisers, small_per_denoiser
        from ..core.compat import device_of
        from ..core.families import family_for

        family = family_for(pipe)
        names = routed_denoisers(pipe, family, denoisers)
        larges = {name: getattr(pipe, name) for name in names}
        device = device_of(larges[names[0]])
        return cls(pipe, family, larges, small_per_denoiser(small, names), device)

    @property
    def denoisers(self) -> tuple[str, ...]:
        return tuple(self.larges)

    def models(self, role: str | None = None) -> dict[str, torch.nn.Module]:
        """Labelled distinct modules: ``large`` / ``small`` with one routed denoiser, else ``transformer``,
        ``transformer_2`` ... and ``small`` (or ``small:transformer`` ... when each expert has its own)."""
        single = len(self.larges) == 1
        larges = {("large" if single else name): model for name, model in self.larges.items()}
        distinct = list({id(model): model for model in self.smalls.values()}.values())
        smalls = (
            {"small": distinct[0]}
            if len(distinct) == 1
            else {f"small:{n}": m for n, m in self.smalls.items()}
        )
        chosen = {"large": larges, "small": smalls, None: {**larges, **smalls}}[role]
        return dict(chosen)

    def label_of(self, module: Any) -> str | None:
        return next((label for label, model in self.models().items() if model is module), None)


class Accelerator(RouterListener):
    """The runtime side of one :class:`~.registry.AcceleratorConfig` (``config.create()`` makes one)."""

    def __init__(self, config: AcceleratorConfig) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def kind(self) -> str:
        return self.config.kind

    def check(self, target: RoutedModels, others: list[Accelerator]) -> None:
        """Raise ValueError (naming the field and the fix) before anything is changed."""

    def apply(self, target: RoutedModels) -> None:
        raise NotImplementedError

    def remove(self, target: RoutedModels) -> None:
        """Undo :meth:`apply`."""

    def call_kwargs(self) -> dict[str, Any]:
        """Pipeline-call arguments this accelerator owns (e.g. the reduced step count); while the stack is
        applied every pipeline call gets them (:mod:`.calls`)."""
        return {}

    def counters(self) -> dict[str, Any]:
        """What it did so far (cache hits, graphs compiled ...), for reports and CI checks."""
        return {}

    def mark_warm(self) -> None:
        """The warm-up is over: what happens from now on (e.g. a compile) counts as after warm-up."""

    def describe(self) -> dict[str, Any]:
        return self.config.describe()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"
