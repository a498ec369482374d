"""The router on a pipeline, under the public verbs.

The verbs users call, ``apply_flowblending_`` / ``remove_flowblending_`` / ``flowblending`` with their
``FlowBlendingConfig``, live in :mod:`flowblending_accel.accelerators.stack`: they apply an accelerator stack
and put the router on top. What they need from the core is here: :class:`RouterConfig` (the router's part of
the config), :func:`attach_routers` / :func:`detach_routers` (building blocks of those verbs, not API: code
that wraps a pipeline calls the verbs), and the accessors users read (routers, run stats, listeners)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from . import diffusers_internals
from .compat import check_adapters, check_context_parallel, check_pair, check_placement
from .families import Family
from .listeners import RouterListener
from .router import ROUTER_HOOK_NAME, TIMINGS, ModelRouter
from .schedule import AXES, PAPER_SCHEDULE, FlowBlendingWarning, Schedule
from .stats import RunStats, merge_runs

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

# The small model, or for pipelines with several denoisers (Wan 2.2) one per denoiser attribute.
SmallModels = torch.nn.Module | dict[str, torch.nn.Module]


@dataclass(frozen=True)
class RouterConfig:
    """The router's part of ``FlowBlendingConfig``: the schedule and how the router follows it.

    Args:
        schedule: stage string (``"L40-S40-L20"``) or :class:`Schedule`; stored parsed.
        axis: ``"step"`` (fraction of solver steps, the paper's) or ``"sigma"`` (fraction of the noise
            range); ``None`` keeps the schedule's own axis (``step`` for strings).
        denoisers: pipeline attributes to route (e.g. ``("transformer", "transformer_2")`` for Wan 2.2);
            ``None`` routes every denoiser the pipeline family has.
        count_flops: count FLOPs per call (``torch.utils.flop_counter``; slows the run).
        timing: ``"auto"``, ``"host"``, ``"cuda"`` or ``"off"`` (see :class:`ModelRouter`).
        reset_on_switch: reset the target model's caches on every switch.
        strict: require the small model to be of the large model's class where the family expects it.
        small_guidance: ``"on"`` or ``"off"`` (guidance-free small stage for a distilled small model;
            Wan-style pipelines with one call per CFG branch only). See :class:`ModelRouter`.
        small_distilled: the small model is step- or guidance-distilled (it expects no CFG); without it,
            ``small_guidance="off"`` warns.
    """

    schedule: str | Schedule = PAPER_SCHEDULE
    axis: str | None = None
    denoisers: tuple[str, ...] | None = None
    count_flops: bool = False
    timing: str = "auto"
    reset_on_switch: bool = True
    strict: bool = True
    small_guidance: str = "on"
    small_distilled: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.schedule, str | Schedule):
            raise TypeError(
                f"FlowBlendingConfig.schedule must be a string like 'L40-S40-L20' or a Schedule, "
                f"got {type(self.schedule).__name__}."
            )
        if self.axis is not None and self.axis not in AXES:
            raise ValueError(f"FlowBlendingConfig.axis={self.axis!r} is not supported; use one of {AXES}.")
        object.__setattr__(self, "schedule", Schedule.coerce(self.schedule, self.axis))
        if isinstance(self.denoisers, str):
            object.__setattr__(self, "denoisers", (self.denoisers,))
        if self.denoisers is not None and not all(isinstance(name, str) for name in self.denoisers):
            raise TypeError(f"FlowBlendingConfig.denoisers={self.denoisers!r} must name pipeline attributes.")
        if self.timing not in TIMINGS:
            raise ValueError(f"FlowBlendingConfig.timing={self.timing!r} is not one of {TIMINGS}.")
        if self.small_guidance not in ("on", "off"):
            raise ValueError(
                f"FlowBlendingConfig.small_guidance={self.small_guidance!r} must be 'on' or 'off'."
            )
        if self.small_guidance == "off" and self.schedule.adaptive is not None:
            raise ValueError(
                f"FlowBlendingConfig.small_guidance='off' with the adaptive schedule {self.schedule}: the "
                "guidance-free small stage answers whole calls, an adaptive step may split one by sample; "
                "use small_guidance='on' or a fixed schedule."
            )


def attach_routers(
    pipe: DiffusionPipeline, smalls: dict[str, torch.nn.Module], family: Family, config: RouterConfig
) -> ModelRouter:
    """Route each of ``pipe``'s denoisers named in ``smalls`` between itself (large) and its small model,
    in place (``family``: the pipeline's, resolved once by the verb). Returns the router of the first;
    :func:`flowblending_routers` lists all. Every router check runs here, before any denoising: double
    apply, the scheduler, pair compatibility, context parallelism, placement, adapters."""
    names = list(smalls)
    routed = [name for name in names if diffusers_internals.hooks_of_type(getattr(pipe, name), ModelRouter)]
    if routed:
        raise ValueError(
            f"FlowBlending is already applied to pipe.{routed[0]} (by this pipeline, or by another that "
            "shares the module); call remove_flowblending_(pipe) first."
        )
    if getattr(pipe, "scheduler", None) is None or not hasattr(pipe.scheduler, "set_timesteps"):
        raise ValueError(
            "pipe.scheduler is missing or not a diffusers scheduler; the router reads its step grid."
        )
    if config.small_guidance == "off" and not family.separate_cfg_calls:
        raise ValueError(
            f"small_guidance='off' needs a pipeline that makes one denoiser call per CFG branch (Wan); the "
            f"{family.name} family batches CFG into one call. Use small_guidance='on' (the default)."
        )
    if config.schedule.adaptive is not None and len(names) > 1:
        raise ValueError(
            f"the adaptive schedule {config.schedule} follows one denoiser's outputs, but {names} are routed "
            f"(one router each): route one with denoisers=({names[0]!r},) or use a fixed schedule."
        )
    _advise(config)
    routers = {name: _router(pipe, getattr(pipe, name), smalls[name], family, config) for name in names}
    try:
        for name, router in routers.items():
            check_pair(router.large, router.small, family, f"pipe.{name}", strict=config.strict)
            check_context_parallel(router.large, router.small, family, f"pipe.{name}")
            router.follow_large()  # the pipeline may have been moved, cast or offloaded before wrapping
            check_placement(router.large, router.small)
            check_adapters(router.large, router.small, f"pipe.{name}")
    except BaseException:  # what following gave a small model (offload hook, parallelism) is taken back
        for router in routers.values():
            router.detach()
        raise
    for name, router in routers.items():
        # Registered last so the router is outermost: the large model's own cache hooks never see calls
        # that belong to the small model.
        diffusers_internals.register_outermost(getattr(pipe, name), router, ROUTER_HOOK_NAME)
    return routers[names[0]]


def detach_routers(pipe: DiffusionPipeline) -> list[ModelRouter]:
    """Remove every router from ``pipe``: forwards are restored and the small models' caches reset."""
    routed = _routed_components(pipe)
    if not routed:
        raise ValueError("FlowBlending is not applied to this pipeline; there is nothing to remove.")
    removed = []
    for module, router in routed:
        router.detach()
        diffusers_internals.remove(module, ROUTER_HOOK_NAME)
        removed.append(router)
    return removed


def flowblending_routers(pipe: DiffusionPipeline) -> list[ModelRouter]:
    """The routers on ``pipe``'s denoisers, in component order (empty when not applied)."""
    return [router for _, router in _routed_components(pipe)]


def add_flowblending_listener(pipe: DiffusionPipeline, listener: RouterListener) -> None:
    """Let ``listener`` follow every router on ``pipe`` (Wan 2.2 has one per expert)."""
    routers = flowblending_routers(pipe)
    if not routers:
        raise ValueError("FlowBlending is not applied to this pipeline; apply it before adding listeners.")
    for router in routers:
        router.add_listener(listener)


def flowblending_stats(pipe: DiffusionPipeline) -> RunStats | None:
    """Stats of the last (or current) run, merged over all routed denoisers of ``pipe``."""
    runs = [router.last_run for router in flowblending_routers(pipe) if router.last_run is not None]
    return merge_runs(runs) if runs else None


def routed_denoisers(pipe: Any, family: Family, requested: tuple[str, ...] | None = None) -> list[str]:
    """The pipeline attributes FlowBlending routes: ``requested``, or every denoiser of the family present."""
    if requested is None:
        return family.present_denoisers(pipe)
    if isinstance(requested, str):
        requested = (requested,)
    for name in requested:
        if not isinstance(getattr(pipe, name, None), torch.nn.Module):
            raise ValueError(
                f"denoisers names {name!r}, but pipe.{name} is not a torch module on this "
                f"{type(pipe).__name__}; choose from {family.present_denoisers(pipe)}."
            )
    return list(requested)


def small_per_denoiser(small: Any, names: list[str]) -> dict[str, Any]:
    """``{attribute: small model}``: one model for every routed denoiser, or the dict given (checked)."""
    if not isinstance(small, dict):
        return dict.fromkeys(names, small)
    missing = [name for name in names if name not in small]
    extra = sorted(set(small) - set(names))
    if missing or extra:
        raise ValueError(
            f"small is a dict with keys {sorted(small)}, but the routed denoisers are {names}: "
            "give one small model per routed denoiser (or pass denoisers=... to route fewer)."
        )
    return small


def _advise(config: RouterConfig) -> None:
    advice = config.schedule.advice()
    if config.small_guidance == "off" and not config.small_distilled:
        advice.append(
            "small_guidance='off' runs the small stage without classifier-free guidance; a small model that "
            "was not step- or guidance-distilled loses prompt adherence there. Pass small_distilled=True if "
            "it is."
        )
    for text in advice:  # shown at the caller of apply_flowblending_ (-> attach_routers -> _advise)
        warnings.warn(text, FlowBlendingWarning, stacklevel=4)


def _router(pipe: Any, large: Any, small: Any, family: Family, config: RouterConfig) -> ModelRouter:
    return ModelRouter(
        small,
        config.schedule,
        scheduler=lambda: pipe.scheduler,
        large=large,
        timestep_arg=family.timestep_arg,
        count_flops=config.count_flops,
        timing=config.timing,
        reset_on_switch=config.reset_on_switch,
        small_guidance=config.small_guidance,
        family=family,
    )


def _routed_components(pipe: Any) -> list[tuple[torch.nn.Module, ModelRouter]]:
    found = []
    for module in getattr(pipe, "components", {}).values():
        if isinstance(module, torch.nn.Module):
            found.extend((module, hook) for _, hook in diffusers_internals.hooks_of_type(module, ModelRouter))
    return found
