"""The pipeline verbs, their config, and the validated stack of accelerators they put under the router.

``apply_flowblending_(pipe, small, FlowBlendingConfig("L40-S40-L20", accelerators=["dpm++:25", "fbc"]))``
checks every member (what this machine lacks first, then clashes, then each against the pipeline), applies
them in :data:`KIND_ORDER` (scheduler, attention, parallel, quantize, cache, compile, engine, memory), puts
the router outermost on every routed denoiser, and makes each accelerator a listener of every router. A plain
schedule string is shorthand for a config with that schedule alone. Call arguments a member owns (a step
reduction's step count) are put into every pipeline call (:mod:`.calls`). ``remove_flowblending_(pipe)``
undoes all of it, and a failed apply undoes what it did. ``with flowblending(pipe, small, config) as router:``
does both around a block. ``applied_stack(pipe)`` is the stack in place.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.api import RouterConfig, SmallModels, attach_routers, detach_routers, flowblending_routers
from ..core.router import ModelRouter
from ..core.schedule import PAPER_SCHEDULE, Schedule
from ..core.step_grid import scheduler_kind
from .calls import own_call_arguments, release_call_arguments
from .registry import KIND_ORDER, AcceleratorConfig, as_configs, validate_configs, validate_for_family
from .runtime import Accelerator, RoutedModels

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

_STACK_ATTRIBUTE = "_flowblending_stack"
StackMember = str | AcceleratorConfig | Accelerator
# What an adaptive schedule cannot run under, and why: at a step where its samples are split between the
# models, each model sees a part of the batch.
NOT_WITH_ADAPTIVE = {
    "cache": "a feature cache keeps the last step's features of the whole batch",
    "memory": "offloading moves one model at a time by segment, and a split step needs both",
    "parallel": "context parallelism is checked per segment start on every rank",
    "engine": "an engine is built for fixed batch shapes",
}


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
        if not self.accelerators:  # the router alone: its own checks run when it is attached
            self.checked_on = target
            return
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


@dataclass(frozen=True)
class FlowBlendingConfig(RouterConfig):
    """The whole spec of FlowBlending on a pipeline: the schedule, the router options (see
    :class:`~flowblending_accel.core.api.RouterConfig`) and the accelerators stacked under the router.

    Args:
        accelerators: spec strings (``"fbc:0.05"``, parsed here, once), configs (``FirstBlockCache(0.05)``),
            accelerators of an earlier stack, or a :class:`Stack` (re-applied as it is: its members' counters
            keep accumulating and it is not checked again against the same models).
    """

    accelerators: tuple[AcceleratorConfig | Accelerator, ...] | Stack = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.accelerators, Stack):
            if self.schedule.adaptive is not None:
                _check_adaptive_stack(self.schedule, [a.config for a in self.accelerators.accelerators])
            return
        if isinstance(self.accelerators, str | AcceleratorConfig):
            raise TypeError(
                f"FlowBlendingConfig.accelerators={self.accelerators!r} is one member: give a list, e.g. "
                f"accelerators=[{self.accelerators!r}]."
            )
        members = list(self.accelerators)
        configs = as_configs(members)  # spec strings parsed here, once
        parsed = [m if isinstance(m, Accelerator) else c for m, c in zip(members, configs, strict=True)]
        object.__setattr__(self, "accelerators", tuple(parsed))
        if self.schedule.adaptive is not None:
            _check_adaptive_stack(self.schedule, configs)

    @classmethod
    def of(cls, config: FlowBlendingConfig | str | Schedule) -> FlowBlendingConfig:
        """``config`` as a FlowBlendingConfig: a schedule string or :class:`Schedule` is shorthand for one."""
        if isinstance(config, FlowBlendingConfig):
            return config
        if isinstance(config, str | Schedule):
            return cls(schedule=config)
        raise TypeError(
            "the config must be a FlowBlendingConfig or a schedule string like 'L40-S40-L20', got "
            f"{type(config).__name__}."
        )


def _check_adaptive_stack(schedule: Schedule, configs: list[AcceleratorConfig]) -> None:
    for config in configs:
        if config.kind in NOT_WITH_ADAPTIVE:
            raise ValueError(
                f"FlowBlendingConfig.accelerators: {config.spec} cannot run under the adaptive schedule "
                f"{schedule} ({NOT_WITH_ADAPTIVE[config.kind]}); drop it or use a fixed schedule."
            )


def apply_flowblending_(
    pipe: DiffusionPipeline, small: SmallModels, config: FlowBlendingConfig | str = PAPER_SCHEDULE
) -> ModelRouter:
    """Route ``pipe``'s denoiser between itself (large) and ``small`` by stage, in place, over the config's
    accelerators applied to every routed model; returns the router of the first routed denoiser
    (:func:`~flowblending_accel.core.api.flowblending_routers` lists all, :func:`applied_stack` is the stack).

    ``small`` is a module, or for pipelines with several denoisers (Wan 2.2) a dict from attribute name to
    module. ``config`` is a :class:`FlowBlendingConfig`, or a schedule string as shorthand for one. Every
    check runs here, once, before any denoising: schedule, family, pair compatibility, placement, each
    member, double apply.

    Example::

        config = FlowBlendingConfig("L40-S40-L20", accelerators=["dpm++:25", "fbc:0.05"])
        router = apply_flowblending_(pipe, small_transformer, config)
        video = pipe(prompt, num_inference_steps=50).frames[0]
        print(router.last_run.table())
        remove_flowblending_(pipe)
    """
    config = FlowBlendingConfig.of(config)
    # A pipeline applied to here; a denoiser routed through another pipeline sharing it: attach_routers says
    if hasattr(pipe, _STACK_ATTRIBUTE):
        raise ValueError(
            "FlowBlending is already applied to this pipeline; call remove_flowblending_(pipe) first."
        )
    stack = Stack.of(config.accelerators)
    target = RoutedModels.of(pipe, small, config.denoisers)
    stack.apply(target)
    try:
        router = attach_routers(pipe, target.smalls, target.family, config)
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
    return router


def remove_flowblending_(pipe: DiffusionPipeline) -> list[ModelRouter]:
    """Remove the routers and every accelerator :func:`apply_flowblending_` put on ``pipe``: forwards are
    restored and the small models' caches reset. Returns the removed routers."""
    if not hasattr(pipe, _STACK_ATTRIBUTE) and not flowblending_routers(pipe):
        raise ValueError("FlowBlending is not applied to this pipeline; there is nothing to remove.")
    stack, target = getattr(pipe, _STACK_ATTRIBUTE, (None, None))
    release_call_arguments(pipe)
    try:
        removed = detach_routers(pipe) if flowblending_routers(pipe) else []
    finally:
        if stack is not None:
            stack.remove(target)
            delattr(pipe, _STACK_ATTRIBUTE)
    return removed


def applied_stack(pipe: DiffusionPipeline) -> Stack | None:
    """The stack :func:`apply_flowblending_` put on ``pipe`` (``None`` when FlowBlending is not applied)."""
    found = getattr(pipe, _STACK_ATTRIBUTE, None)
    return found[0] if found else None


@contextmanager
def flowblending(
    pipe: DiffusionPipeline, small: SmallModels, config: FlowBlendingConfig | str = PAPER_SCHEDULE
) -> Iterator[ModelRouter]:
    """:func:`apply_flowblending_` for the block, :func:`remove_flowblending_` after it, even when it raises::

    with flowblending(pipe, small, "L40-S40-L20") as router:
        video = pipe(prompt).frames[0]
    print(router.last_run.table())
    """
    router = apply_flowblending_(pipe, small, config)
    try:
        yield router
    finally:
        remove_flowblending_(pipe)
