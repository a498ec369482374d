"""A validated stack of accelerators applied together with the router on top, and the verbs around it.

``apply_stack(pipe, small, "L40-S40-L20", ["dpm++:25", "fbc", "compile"])`` checks every member (what this
machine lacks first, then clashes, then each against the pipeline), applies them in :data:`KIND_ORDER`
(scheduler, attention, quantize, cache, compile, engine, memory), puts the router outermost on every routed
denoiser, and makes each accelerator a listener of every router. Call arguments a member owns (a step
reduction's step count) are put into every pipeline call (:mod:`.calls`). ``remove_stack(pipe)`` undoes
all of it, and a failed apply undoes what it did. ``with accelerated(pipe, small, schedule, stack) as
(router, stack):`` does both around a block.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.api import (
    RouterOption,
    ScheduleLike,
    SmallModels,
    apply_flowblending_,
    flowblending_routers,
    remove_flowblending_,
)
from ..core.router import ModelRouter
from ..core.schedule import PAPER_SCHEDULE
from ..core.step_grid import scheduler_kind
from .calls import own_call_arguments, release_call_arguments
from .registry import KIND_ORDER, AcceleratorConfig, as_configs, validate_configs, validate_for_family
from .runtime import Accelerator, RoutedModels

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

_STACK_ATTRIBUTE = "_flowblending_stack"
StackMember = str | AcceleratorConfig | Accelerator


@dataclass
class Stack:
    """Accelerators applied together, in :data:`KIND_ORDER`, with the router on top. A stack is checked
    against the models it meets once: applied again to the same models (bench's rounds), it is not checked
    again."""

    accelerators: list[Accelerator]
    checked_on: RoutedModels | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, members: Iterable[StackMember] | Stack) -> Stack:
        if isinstance(members, Stack):
            return members
        members = list(members)
        configs = as_configs(members)
        return cls(
            [m if isinstance(m, Accelerator) else c.create() for m, c in zip(members, configs, strict=True)]
        )

    def ordered(self) -> list[Accelerator]:
        return sorted(self.accelerators, key=lambda a: KIND_ORDER.index(a.kind))

    def validate(self, target: RoutedModels) -> None:
        configs = [a.config for a in self.accelerators]
        validate_configs(configs, str(target.device) if target.device else None)
        validate_for_family(configs, target.family, target.denoisers, scheduler_kind(target.pipe.scheduler))
        for accelerator in self.accelerators:
            accelerator.check(target, [a for a in self.accelerators if a is not accelerator])
        self.checked_on = target

    def apply(self, target: RoutedModels) -> None:
        if self.checked_on != target:
            self.validate(target)
        applied: list[Accelerator] = []
        try:
            for accelerator in self.ordered():
                accelerator.apply(target)
                applied.append(accelerator)
        except BaseException:
            for accelerator in reversed(applied):
                accelerator.remove(target)
            raise

    def remove(self, target: RoutedModels) -> None:
        for accelerator in reversed(self.ordered()):
            accelerator.remove(target)

    def call_kwargs(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for accelerator in self.ordered():
            merged.update(accelerator.call_kwargs())
        return merged

    def without_owned(self, call_kwargs: dict[str, Any]) -> dict[str, Any]:
        """``call_kwargs`` less the arguments this stack owns: a tool's call that lets the stack decide."""
        owned = self.call_kwargs()
        return {name: value for name, value in call_kwargs.items() if name not in owned}

    def mark_warm(self) -> None:
        for accelerator in self.accelerators:
            accelerator.mark_warm()

    def describe(self) -> list[dict[str, Any]]:
        return [a.describe() for a in self.ordered()]

    def counters(self) -> dict[str, Any]:
        return {a.name: a.counters() for a in self.ordered() if a.counters()}


def apply_stack(
    pipe: DiffusionPipeline,
    small: SmallModels,
    schedule: ScheduleLike = PAPER_SCHEDULE,
    accelerators: Iterable[StackMember] | Stack = (),
    **router_options: RouterOption,
) -> tuple[ModelRouter, Stack]:
    """Apply ``accelerators`` to every routed model, then the router on top; returns ``(router, stack)``.

    Members are spec strings (``"fbc:0.05"``), configs (``FirstBlockCache(0.05)``) or accelerators from an
    earlier stack (re-applied; their counters keep accumulating).
    """
    if flowblending_routers(pipe) or hasattr(pipe, _STACK_ATTRIBUTE):
        raise ValueError("FlowBlending is already applied to this pipeline; call remove_stack(pipe) first.")
    stack = Stack.of(accelerators)
    target = RoutedModels.of(pipe, small, router_options.get("denoisers"))
    stack.apply(target)
    try:
        router = apply_flowblending_(
            pipe, small, schedule, **{**router_options, "denoisers": target.denoisers}
        )
    except BaseException:
        stack.remove(target)
        raise
    for routed in flowblending_routers(pipe):
        for accelerator in stack.ordered():
            routed.add_listener(accelerator)
    if stack.call_kwargs():  # e.g. dpm++:10 owns num_inference_steps: the pipeline runs 10 steps
        owners = [a.config.spec for a in stack.ordered() if a.call_kwargs()]
        own_call_arguments(pipe, stack.call_kwargs, " + ".join(owners))
    setattr(pipe, _STACK_ATTRIBUTE, (stack, target))
    return router, stack


def remove_stack(pipe: DiffusionPipeline) -> None:
    """Remove the router and every accelerator ``apply_stack`` put on ``pipe``."""
    if not hasattr(pipe, _STACK_ATTRIBUTE):
        raise ValueError("no FlowBlending stack is applied to this pipeline.")
    stack, target = getattr(pipe, _STACK_ATTRIBUTE)
    release_call_arguments(pipe)
    remove_flowblending_(pipe)
    stack.remove(target)
    delattr(pipe, _STACK_ATTRIBUTE)


def applied_stack(pipe: DiffusionPipeline) -> Stack | None:
    """The stack ``apply_stack`` put on ``pipe`` (``None`` when there is none)."""
    found = getattr(pipe, _STACK_ATTRIBUTE, None)
    return found[0] if found else None


@contextmanager
def accelerated(
    pipe: DiffusionPipeline,
    small: SmallModels,
    schedule: ScheduleLike = PAPER_SCHEDULE,
    accelerators: Iterable[StackMember] | Stack = (),
    **router_options: RouterOption,
) -> Iterator[tuple[ModelRouter, Stack]]:
    """``apply_stack`` for the block, ``remove_stack`` after it, even when it raises."""
    router, stack = apply_stack(pipe, small, schedule, accelerators, **router_options)
    try:
        yield router, stack
    finally:
        remove_stack(pipe)
