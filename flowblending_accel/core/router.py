"""ModelRouter: a stateful diffusers hook that sends each solver step to the large or the small model.

Registered outermost on the pipeline's own denoiser (``pipe.transformer`` / ``pipe.unet``), it leaves that
module's identity, class, config, LoRA loading and ``save_pretrained`` alone. Per call it:

1. notices a new run (the scheduler's ``timesteps`` tensor is replaced by every ``set_timesteps``), lays the
   schedule onto the live step grid (:class:`~.plan.Plan`) and resets both models' caches;
2. finds the solver step: ``scheduler.step_index`` (exact, no device sync), else ``begin_index`` on the
   first iteration, else the timestep argument matched against the grid (per-token timesteps read by their
   max, since conditioning tokens carry 0);
3. picks the model of that step, so CFG branches and Heun correctors stay on the model that began the step;
4. on a switch, resets the cache state of the model it switches *to* (and puts the pipeline's cache context
   back, since a bare reset wipes it);
5. calls the large model's original forward chain, or the small model inside the same cache context;
6. records the call (step, timestep, sigma, model, time, optionally FLOPs) and tells its listeners.

Both models are reset at the start and at the end of every run, and when a call raises. The same run
control (:meth:`ModelRouter.start_run`, :meth:`~ModelRouter.enter_step`, :meth:`~ModelRouter.call`,
:meth:`~ModelRouter.end_run`) drives k-diffusion samplers through :meth:`ModelRouter.as_denoiser`.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from diffusers.hooks.hooks import BaseState, ModelHook, StateManager
from torch.utils.flop_counter import FlopCounterMode

from . import diffusers_internals, patches
from .adaptive import split_by_sample
from .call_timer import CallTimer, timing_mode
from .compat import check_adapters, check_placement
from .denoiser import RoutedDenoiser
from .families import Family
from .follow import Follower
from .guidance_free import GuidanceFreeSmallStage
from .listeners import (
    CallEvent,
    RouterListener,
    SegmentStart,
    answers_calls,
    intercepts_calls,
    listens_to_calls,
)
from .plan import Plan
from .schedule import PAPER_SCHEDULE, FlowBlendingWarning, Schedule
from .session import MIXED, RunSession
from .stats import CallRecord, RunStats
from .step_grid import SolverView

ROUTER_HOOK_NAME = "flowblending_router"
TIMINGS = ("auto", "host", "cuda", "off")
MODELS = ("large", "small")


class _ContextOnly(BaseState):
    """The router keeps no per-context state; its StateManager only receives the pipeline's context."""

    def reset(self, *args, **kwargs) -> None:
        pass


class ModelRouter(ModelHook):
    """Route a denoiser's calls between itself (the large model) and ``small`` by solver step.

    Args:
        small: the small denoiser, same family and interface as the large one.
        schedule: a :class:`Schedule` or a string like ``"L40-S40-L20"``.
        axis: ``"step"`` or ``"sigma"``; overrides the schedule's axis when given.
        scheduler: the pipeline's scheduler, or a zero-argument callable returning it (read on every run,
            so swapping ``pipe.scheduler`` later is picked up).
        large: the large denoiser, for use without a pipeline (:meth:`as_denoiser`); set by the hook
            otherwise.
        timestep_arg: keyword name and positional index of the timestep (UNets take it positionally).
        count_flops: count FLOPs of every call with ``torch.utils.flop_counter`` (slows the run).
        timing: ``"auto"`` (CUDA events on a GPU, host clock otherwise), ``"host"``, ``"cuda"`` or ``"off"``.
        reset_on_switch: reset the target model's cache state on every switch (leave on; off only to
            demonstrate stale-cache reuse).
        small_guidance: ``"on"`` (default) or ``"off"``: run the small stage guidance-free, as a step- or
            guidance-distilled small model expects (the paper's LDL). Only for pipelines that make one call
            per CFG branch, conditional first (Wan): the second call of a small step returns the first
            call's output, so ``uncond + g * (cond - uncond)`` is exactly ``cond`` and half the small calls
            go.
        history: how many finished runs to keep in :attr:`runs`.
        family: the pipeline's :class:`~flowblending_accel.core.families.Family`, when known: following
            the large model's context parallelism reads its head count and mask handling from it.
    """

    _is_stateful = True

    def __init__(
        self,
        small: torch.nn.Module | Callable,
        schedule: str | Schedule = PAPER_SCHEDULE,
        axis: str | None = None,
        *,
        scheduler: Any = None,
        large: torch.nn.Module | Callable | None = None,
        timestep_arg: tuple[str, int] = ("timestep", 1),
        count_flops: bool = False,
        timing: str = "auto",
        reset_on_switch: bool = True,
        small_guidance: str = "on",
        history: int = 8,
        family: Family | None = None,
    ) -> None:
        super().__init__()
        if timing not in TIMINGS:
            raise ValueError(f"timing={timing!r} is not one of {TIMINGS}.")
        if small_guidance not in ("on", "off"):
            raise ValueError(f"small_guidance={small_guidance!r} must be 'on' or 'off'.")
        self.small, self.large = small, large
        self.schedule = Schedule.coerce(schedule, axis)
        self.timestep_arg = timestep_arg
        self.count_flops, self.timing = count_flops, timing
        self.reset_on_switch, self.small_guidance = reset_on_switch, small_guidance
        self.context = StateManager(_ContextOnly)  # receives the pipeline's cache context
        self._runs: deque[RunStats] = deque(maxlen=history)
        self._scheduler_source = scheduler
        self._session: RunSession | None = None
        self._listeners: list[RouterListener] = []
        self._call_listeners = False
        self._answering: list[RouterListener] = []
        self._intercepting: list[RouterListener] = []
        self.family = family
        self._follower = Follower(family)
        if small_guidance == "off":  # the small stage's unconditional calls answered by an interceptor
            self.add_listener(GuidanceFreeSmallStage())

    # ------------------------------------------------------------------------------- read-only state
    @property
    def session(self) -> RunSession | None:
        """The run in progress (``None`` between runs)."""
        return self._session

    @property
    def last_run(self) -> RunStats | None:
        """Stats of the run in progress, else of the most recent one."""
        if self._session is not None:
            return self._session.stats
        return self._runs[-1] if self._runs else None

    @property
    def runs(self) -> tuple[RunStats, ...]:
        """Stats of the finished (or aborted) runs kept, oldest first."""
        return tuple(self._runs)

    @property
    def listeners(self) -> tuple[RouterListener, ...]:
        return tuple(self._listeners)

    @property
    def cache_context(self) -> diffusers_internals.CacheContext | None:
        """The pipeline's cache context of the current call (``None`` outside one)."""
        return diffusers_internals.current_context(self.context)

    @property
    def scheduler(self) -> Any:
        """The scheduler of the run in progress, else the one the router was given (``pipe.scheduler``)."""
        if self._session is not None and self._session.scheduler is not None:
            return self._session.scheduler
        return self._given_scheduler()

    def _given_scheduler(self) -> Any:
        source = self._scheduler_source
        return source() if callable(source) and not hasattr(source, "set_timesteps") else source

    def model(self, name: str) -> Any:
        """The ``"large"`` or ``"small"`` module (or callable)."""
        if name not in MODELS:
            raise ValueError(f"model name {name!r} must be 'large' or 'small'.")
        return self.large if name == "large" else self.small

    def __repr__(self) -> str:
        return f"ModelRouter(schedule={self.schedule}, axis={self.schedule.axis})"

    # ----------------------------------------------------------------------------------- configuration
    def set_schedule(self, schedule: str | Schedule, axis: str | None = None) -> None:
        """Use ``schedule`` from the next run on (the run in progress, if any, keeps its plan)."""
        parsed = Schedule.coerce(schedule, axis)
        if "small" in parsed.models and isinstance(self.large, torch.nn.Module):
            self.follow_large()
            check_placement(self.large, self.small)
        self.schedule = parsed

    def plan(self, num_inference_steps: int, **set_timesteps_kwargs: Any) -> Plan:
        """The model table the next run will follow at ``num_inference_steps`` on the router's scheduler."""
        return Plan.for_scheduler(
            self.schedule, self._given_scheduler(), num_inference_steps, **set_timesteps_kwargs
        )

    def add_listener(self, listener: RouterListener) -> None:
        """Tell ``listener`` about every run, segment and call from now on (see :mod:`.listeners`)."""
        if not isinstance(listener, RouterListener):
            raise TypeError(
                "listener must be a flowblending_accel.core.listeners.RouterListener, "
                f"got {type(listener).__name__}: "
                "subclass RouterListener and override the events you need."
            )
        self._listeners.append(listener)
        self._listeners_changed()

    def remove_listener(self, listener: RouterListener) -> None:
        self._listeners.remove(listener)
        self._listeners_changed()

    def _listeners_changed(self) -> None:
        self._call_listeners = any(map(listens_to_calls, self._listeners))
        self._answering = [listener for listener in self._listeners if answers_calls(listener)]
        self._intercepting = [listener for listener in self._listeners if intercepts_calls(listener)]

    def as_denoiser(
        self, sigmas: Any, *, order: int = 1, calls_per_iteration: int = 1, sigma_kind: str = "flow"
    ) -> RoutedDenoiser:
        """A k-diffusion style ``model(x, sigma, **kw)`` callable routing between ``large`` and ``small``.

        ``sigmas`` is the sampler's schedule (with its final 0), ``order`` 2 for Heun-type samplers (a
        corrector call per step), ``calls_per_iteration`` 2 when CFG calls the denoiser twice per evaluation,
        ``sigma_kind`` ``"flow"`` (noise level in [0, 1]) or ``"ve"`` (k-diffusion / EDM sigma).
        """
        return RoutedDenoiser(
            self, sigmas, order=order, calls_per_iteration=calls_per_iteration, sigma_kind=sigma_kind
        )

    # ------------------------------------------------------------------------------------- run control
    def follow_large(self) -> None:
        """Give the small model the device, dtype, offloading and attention settings the large model has now
        (see :mod:`.follow`); runs at every run start, and at apply time."""
        placement = not any(listener.manages_placement for listener in self._listeners)
        self._follower.sync(self.large, self.small, placement)

    def start_run(self, plan: Plan, scheduler: Any = None, rows_per_sample: int = 1) -> RunSession:
        """End any open run, reset both models' caches, and start a run following ``plan``
        (``rows_per_sample``: 2 where one call stacks both CFG branches, for an adaptive schedule)."""
        self.end_run()
        if "small" in plan.schedule.models:
            self.follow_large()
            check_placement(self.large, self.small)
            check_adapters(self.large, self.small, "the large model")
        for advice in plan.advice():
            warnings.warn(advice, FlowBlendingWarning, stacklevel=2)
        self._reset_model("small")
        self._reset_model("large")
        self._session = RunSession.start(plan, scheduler, self._timing_mode(), rows_per_sample)
        self._notify("on_run_start", self._session)
        return self._session

    def enter_step(self, step: int) -> str:
        """Move the open run to solver ``step``; on a new segment reset the model switched to and tell
        the listeners. Returns the step's model."""
        session = self._require_session()
        was_active = session.active_model
        model, starts_segment = session.enter(step)
        if not starts_segment:
            return model
        running_before = set(MODELS) if was_active == MIXED else {was_active}
        for started in MODELS if model == MIXED else (model,):
            if started in running_before:
                continue
            if was_active is not None and self.reset_on_switch:
                self._reset_model(started)
            first, last = session.segment_span(started, step)
            self._notify("on_segment_start", SegmentStart(started, step, first, last, was_active is not None))
        return model

    def call(self, model: str, step: int, iteration: int | None, args: tuple, kwargs: dict) -> Any:
        """Run ``model`` on one denoiser call of the open run, recorded and timed; on an exception the run
        is aborted and both models reset before it propagates. ``"mixed"`` (an adaptive run's step where
        samples run on both models) splits the call by sample."""
        session = self._require_session()
        for listener in self._intercepting:
            output = listener.intercept(self, session, model, step, iteration)
            if output is not None:
                return output
        if model == MIXED:
            output = split_by_sample(
                session.switches,
                step,
                args,
                kwargs,
                lambda part, a, kw, samples: self._recorded(session, step, part, iteration, a, kw, samples),
            )
        else:
            output = self._recorded(session, step, model, iteration, args, kwargs)
        if session.switches is not None:
            session.observe(step, output)
        return output

    def call_model(self, model: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``model`` directly, unrecorded: the large model's forward chain under this hook (its caches,
        compiled blocks) or the small model inside the pipeline's cache context. For probes that evaluate
        the other model on the same inputs."""
        if model == "small":
            with diffusers_internals.cache_context(self.small, self.cache_context):
                return self.small(*args, **kwargs)
        if self.fn_ref is not None:
            return self.fn_ref.original_forward(*args, **kwargs)
        return self.model(model)(*args, **kwargs)

    def end_run(self, error: BaseException | None = None, completed: bool = False) -> RunStats | None:
        """Close the open run (finished, or aborted with ``error``) and keep its stats; a no-op without
        one."""
        session, self._session = self._session, None
        if session is None:
            return None
        stats = session.close(error, completed)
        self._follower.after_run()
        self._runs.append(stats)
        self._notify("on_run_end", stats)
        return stats

    # ------------------------------------------------------------------------------- hook interface
    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self.large = module
        return module

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        scheduler = self._calling_scheduler()
        session = self._session
        if session is None or not session.is_current_for(scheduler):
            session = self._start_pipeline_run(scheduler)
        step = session.plan.view.step_of_call(scheduler, lambda: self._timestep_value(args, kwargs))
        if step < session.last_step:  # the same grid walked again: a custom loop starting over
            session = self._start_pipeline_run(scheduler)
        model = self.enter_step(step)
        return self.call(model, step, getattr(scheduler, "step_index", None), args, kwargs)

    def deinitalize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        # diffusers calls this when the hook is removed (``remove_hook``, ours or the user's): what following
        # the large model gave the small one, and the patches it holds, are undone with it.
        self.detach()
        return module

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        # Reached from `maybe_free_model_hooks` once a pipeline call's loop has completed.
        self.end_run(completed=True)
        self._reset_between_runs()
        return module

    def detach(self) -> None:
        """Close any open run (as it stands), reset the small model's caches and undo what following the
        large model attached to the small one: before the hook is removed."""
        self.end_run()
        self._reset_between_runs()
        self._follower.release(self.small)

    def _reset_between_runs(self) -> None:
        diffusers_internals.reset_cache_state(self.small)
        self.context.reset()

    # ------------------------------------------------------------------------------------------ helpers
    def _require_session(self) -> RunSession:
        if self._session is None:
            raise RuntimeError(
                "no run is open: call start_run(plan) first (the pipeline hook does this itself)."
            )
        return self._session

    def _calling_scheduler(self) -> Any:
        """The scheduler of the pipeline that is running this call: a denoiser shared by several pipelines
        (``from_pipe`` for img2img / i2v, or hand-built ones) is routed along the caller's own grid. Found
        on the call stack (the pipeline's ``__call__`` holding this module: :func:`.patches.calling_pipeline`
        says why the stack); else the router's own."""
        caller = patches.calling_pipeline(self.large)
        if caller is not None:
            return caller.scheduler
        scheduler = self._given_scheduler()
        if scheduler is None:
            raise ValueError(
                "ModelRouter has no scheduler: pass `scheduler=pipe.scheduler` (or use apply_flowblending_)."
            )
        return scheduler

    def _start_pipeline_run(self, scheduler: Any) -> RunSession:
        view = SolverView.from_scheduler(scheduler)
        plan = Plan.build(self.schedule, view, view.first_step_of(scheduler))
        return self.start_run(plan, scheduler, self._rows_per_sample() if plan.switch_window else 1)

    def _rows_per_sample(self) -> int:
        """2 when the calling pipeline stacks both CFG branches in one call (the family says it batches CFG
        and the pipeline says guidance is on), else 1."""
        if self.family is None or not self.family.batched_cfg:
            return 1
        caller = patches.calling_pipeline(self.large)
        return 2 if getattr(caller, "do_classifier_free_guidance", False) else 1

    def _notify(self, event: str, *args: Any) -> None:
        for listener in self._listeners:
            getattr(listener, event)(self, *args)

    def _reset_model(self, model: str) -> None:
        if model == "small":
            diffusers_internals.reset_cache_state(self.small)
        elif isinstance(self.large, torch.nn.Module):
            diffusers_internals.reset_cache_state(self.large, self.cache_context, skip=[self])

    def _timestep_value(self, args: tuple, kwargs: dict) -> float:
        name, position = self.timestep_arg
        value = kwargs.get(name, args[position] if len(args) > position else None)
        if value is None:
            raise ValueError(
                f"the denoiser was called without `{name}` (keyword or positional #{position}); set "
                "`timestep_arg` to where this pipeline passes it."
            )
        # Per-token timesteps give conditioning tokens 0, so the step's timestep is the largest entry.
        return float(value.max()) if isinstance(value, torch.Tensor) else float(value)

    def _recorded(
        self,
        session: RunSession,
        step: int,
        model: str,
        iteration: int | None,
        args: tuple,
        kwargs: dict,
        samples: tuple[int, ...] | None = None,
    ) -> Any:
        planned = session.plan.at(step)
        stage = 1 if model == "small" and session.switches is not None else planned.stage
        record = CallRecord(step, model, stage, planned.timestep, planned.sigma, iteration, samples=samples)
        timer = CallTimer(session.timing)
        try:
            output = self._answered(record, args, kwargs)
            if output is not None:
                record.replayed = True
            elif self.count_flops:
                with FlopCounterMode(display=False) as counter:
                    output = self.call_model(model, *args, **kwargs)
                record.flops = counter.get_total_flops()
            else:
                output = self.call_model(model, *args, **kwargs)
        except BaseException as error:
            self._abort(error)
            raise
        session.stats.add(record, timer.stop(record))
        if self._call_listeners:
            self._notify("on_call", CallEvent(record, args, kwargs, output))
        return output

    def _answered(self, record: CallRecord, args: tuple, kwargs: dict) -> Any:
        for listener in self._answering:
            output = listener.answer(self, record, args, kwargs)
            if output is not None:
                return output
        return None

    def _abort(self, error: BaseException) -> None:
        # Leave both models reusable: no half-written cache state survives into the next run.
        self.end_run(error)
        self._reset_model("small")
        self._reset_model("large")

    def _timing_mode(self) -> str:
        return timing_mode(self.timing, self.large)
