"""The accelerator contract and the validated stack that applies several of them with the router.

Every accelerator is a small object with the same few methods: ``apply`` (to both models of the pair),
``on_run_start`` / ``on_segment_start`` / ``on_run_end`` (called by the router, so per-model state follows
the trajectory's segments), ``remove`` and ``describe``. A stack sorts them into the one order that works
(scheduler, attention backend, caches, compile, TensorRT, then the router outermost), rejects combinations
that cannot work with the reason, and undoes everything on ``remove`` or on a failed ``apply``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

STAGES = ("scheduler", "attention", "cache", "compile", "engine")


@dataclass
class Pair:
    """What accelerators act on: the pipeline, the routed denoiser's attribute name and the small model."""

    pipe: Any
    small: torch.nn.Module
    denoiser: str = "transformer"

    @property
    def large(self) -> torch.nn.Module:
        return getattr(self.pipe, self.denoiser)

    def models(self) -> dict[str, torch.nn.Module]:
        return {"large": self.large, "small": self.small}


class Accelerator:
    """Base class: subclasses set ``kind`` and ``stage`` and override what they need."""

    kind: str = "accelerator"
    stage: str = "cache"
    exclusive_with: tuple[str, ...] = ()  # kinds that cannot share a stack with this one

    def check(self, pair: Pair, others: list[Accelerator]) -> None:
        """Raise ValueError (naming the field and the fix) before anything is changed."""

    def apply(self, pair: Pair) -> None:
        raise NotImplementedError

    def remove(self, pair: Pair) -> None:
        """Undo :meth:`apply`."""

    def call_kwargs(self) -> dict[str, Any]:
        """Pipeline-call arguments this accelerator needs (e.g. the reduced step count)."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def counters(self) -> dict[str, Any]:
        """What it did in the last run (cache hits, recompiles ...), for reports and CI checks."""
        return {}

    def __repr__(self) -> str:
        details = ", ".join(f"{k}={v}" for k, v in self.describe().items() if k != "kind")
        return f"{self.kind}({details})"


@dataclass
class Stack:
    """Accelerators applied together, in stage order, with the router on top."""

    accelerators: list[Accelerator] = field(default_factory=list)

    def ordered(self) -> list[Accelerator]:
        return sorted(self.accelerators, key=lambda a: STAGES.index(a.stage))

    def validate(self, pair: Pair) -> None:
        for accelerator in self.accelerators:  # what this machine lacks first: the most useful reason
            accelerator.check(pair, [a for a in self.accelerators if a is not accelerator])
        kinds = [a.kind for a in self.accelerators]
        for accelerator in self.accelerators:
            clash = [k for k in accelerator.exclusive_with if k in kinds and k != accelerator.kind]
            if clash:
                raise ValueError(f"{accelerator.kind} cannot be stacked with {clash[0]}: {_reason(accelerator, clash[0])}")
        caches = [a.kind for a in self.accelerators if a.stage == "cache"]
        if len(caches) > 1:
            raise ValueError(
                f"stack has several feature caches {caches}: each model takes one cache technique (diffusers "
                "raises 'Caching has already been enabled'); keep one."
            )

    def apply(self, pair: Pair) -> None:
        self.validate(pair)
        applied: list[Accelerator] = []
        try:
            for accelerator in self.ordered():
                accelerator.apply(pair)
                applied.append(accelerator)
        except BaseException:
            for accelerator in reversed(applied):
                accelerator.remove(pair)
            raise

    def remove(self, pair: Pair) -> None:
        for accelerator in reversed(self.ordered()):
            accelerator.remove(pair)

    def call_kwargs(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for accelerator in self.ordered():
            merged.update(accelerator.call_kwargs())
        return merged

    def describe(self) -> list[dict[str, Any]]:
        return [a.describe() for a in self.ordered()]

    def counters(self) -> dict[str, Any]:
        return {a.kind: a.counters() for a in self.ordered() if a.counters()}


def _reason(accelerator: Accelerator, other: str) -> str:
    reasons = getattr(accelerator, "clash_reasons", {})
    return reasons.get(other, "they patch the same modules.")
