"""ModelRouter: a stateful diffusers hook that sends each solver step to the large or the small model.

Registered outermost on the pipeline's own denoiser (``pipe.transformer`` / ``pipe.unet``), it leaves that
module's identity, class, config, LoRA loading and ``save_pretrained`` alone. Per call it:

1. notices a new run (the scheduler's ``timesteps`` tensor is replaced by every ``set_timesteps``), lays the
   schedule onto the live step grid (:class:`~flowblending_accel.plan.Plan`) and resets both models' caches;
2. finds the solver step: ``scheduler.step_index`` (exact, no device sync), else ``begin_index`` on the
   first iteration, else the timestep argument matched against the grid (per-token timesteps read by their
   max, since conditioning tokens carry 0);
3. picks the model of that step, so CFG branches and Heun correctors stay on the model that began the step;
4. on a switch, resets the cache state of the model it switches *to* (and puts the pipeline's cache context
   back, since a bare reset wipes it);
5. calls the large model's original forward chain, or the small model inside the same cache context;
6. records the call (step, timestep, sigma, model, time, optionally FLOPs).

Both models are reset at the start and at the end of every run, and when a call raises.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks.hooks import BaseState, ModelHook, StateManager
from torch.utils.flop_counter import FlopCounterMode

from . import _hooks
from .plan import Plan
from .schedule import Schedule
from .solver import SolverView
from .stats import CallRecord, RunStats

ROUTER_HOOK_NAME = "flowblending_router"
TIMINGS = ("auto", "host", "cuda", "off")


class _ContextOnly(BaseState):
    """The router keeps no per-context state; its StateManager only receives the pipeline's context."""

    def reset(self, *args, **kwargs) -> None:
        pass


@dataclass
class _Run:
    plan: Plan
    stats: RunStats
    scheduler: Any
    timesteps: Any  # the scheduler's timesteps tensor of this run; a new one means a new run
    timing: str = "off"
    last_step: int = -1
    current_model: str | None = None
    conditional: tuple[Any, Any] | None = None  # ((step, iteration), output) of the last small call


class ModelRouter(ModelHook):
    """Route a denoiser's calls between itself (the large model) and ``small`` by solver step.

    Args:
        small: the small denoiser, same family and interface as the large one.
        schedule: a :class:`Schedule` or a string like ``"L40-S40-L20"``.
        axis: ``"step"`` or ``"sigma"``; overrides the schedule's axis when given.
        scheduler: the pipeline's scheduler, or a zero-argument callable returning it (read on every run,
            so swapping ``pipe.scheduler`` later is picked up).
        timestep_arg: keyword name and positional index of the timestep (UNets take it positionally).
        count_flops: count FLOPs of every call with ``torch.utils.flop_counter`` (slows the run).
        timing: ``"auto"`` (CUDA events on a GPU, host clock otherwise), ``"host"``, ``"cuda"`` or ``"off"``.
        reset_on_switch: reset the target model's cache state on every switch (leave on; off only to
            demonstrate stale-cache reuse).
        small_guidance: ``"on"`` (default) or ``"off"``: run the small stage guidance-free, as a step- or
            guidance-distilled small model expects (the paper's LDL). Only for pipelines that make one call
            per CFG branch, conditional first (Wan): the second call of a small step returns the first
            call's output, so ``uncond + g * (cond - uncond)`` is exactly ``cond`` and half the small calls go.
        history: how many finished runs to keep in :attr:`runs`.
    """

    _is_stateful = True

    def __init__(
        self,
        small: torch.nn.Module | Callable,
        schedule: str | Schedule = "L40-S40-L20",
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
    ) -> None:
        super().__init__()
        if timing not in TIMINGS:
            raise ValueError(f"timing={timing!r} is not one of {TIMINGS}.")
        if small_guidance not in ("on", "off"):
            raise ValueError(f"small_guidance={small_guidance!r} must be 'on' or 'off'.")
        self.small_guidance = small_guidance
        self.small = small
        self.large = large
        self.schedule = Schedule.coerce(schedule, axis)
        self.timestep_arg = timestep_arg
        self.count_flops = count_flops
        self.timing = timing
        self.reset_on_switch = reset_on_switch
        self.context = StateManager(_ContextOnly)
        self.runs: deque[RunStats] = deque(maxlen=history)
        self._scheduler_source = scheduler
        self._run: _Run | None = None
        self.listeners: list[Any] = []
        self._call_listeners = False

    # ------------------------------------------------------------------------------------ public state
    @property
    def last_run(self) -> RunStats | None:
        """Stats of the run in progress, else of the most recent one."""
        if self._run is not None:
            return self._run.stats
        return self.runs[-1] if self.runs else None

    @property
    def scheduler(self) -> Any:
        source = self._scheduler_source
        return source() if callable(source) and not hasattr(source, "set_timesteps") else source

    def as_denoiser(self, sigmas: Any, *, order: int = 1, calls_per_iteration: int = 1, sigma_kind: str = "flow"):
        """A k-diffusion style ``model(x, sigma, **kw)`` callable routing between ``large`` and ``small``.

        ``sigmas`` is the sampler's schedule (with its final 0), ``order`` 2 for Heun-type samplers (a
        corrector call per step), ``calls_per_iteration`` 2 when CFG calls the denoiser twice per evaluation,
        ``sigma_kind`` ``"flow"`` (noise level in [0, 1]) or ``"ve"`` (k-diffusion / EDM sigma).
        """
        from .denoiser import RoutedDenoiser

        return RoutedDenoiser(self, sigmas, order=order, calls_per_iteration=calls_per_iteration, sigma_kind=sigma_kind)

    def set_schedule(self, schedule: str | Schedule, axis: str | None = None) -> None:
        """Use ``schedule`` from the next run on (the run in progress, if any, keeps its plan)."""
        parsed = Schedule.coerce(schedule, axis)
        if "small" in parsed.models and isinstance(self.large, torch.nn.Module):
            check_placement(self.large, self.small)
        self.schedule = parsed

    def plan(self, num_inference_steps: int, **set_timesteps_kwargs: Any) -> Plan:
        """The model table the next run will follow at ``num_inference_steps`` on the current scheduler."""
        return self.schedule.plan(self.scheduler, num_inference_steps, **set_timesteps_kwargs)

    def __repr__(self) -> str:
        return f"ModelRouter(schedule={self.schedule}, axis={self.schedule.axis})"

    # ------------------------------------------------------------------------------- hook interface
    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self.large = module
        return module

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        run, step = self._prepare_call(args, kwargs)
        model = run.plan.model_of_step(step)
        fn = self.fn_ref.original_forward if model == "large" else self._call_small
        iteration = getattr(run.scheduler, "step_index", None)
        if model == "small" and self.small_guidance == "off":
            key = (step, iteration)
            if run.conditional is not None and run.conditional[0] == key:
                run.stats.skipped_uncond_calls += 1
                return run.conditional[1]
            output = self._execute(run, step, model, fn, args, kwargs, iteration)
            run.conditional = (key, output)
            return output
        return self._execute(run, step, model, fn, args, kwargs, iteration)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        # Reached from `maybe_free_model_hooks` at the end of every pipeline call.
        self._close_run()
        _hooks.reset_cache_state(self.small)
        self.context.reset()
        return module

    # ------------------------------------------------------------------------------------ run control
    def _prepare_call(self, args: tuple, kwargs: dict) -> tuple[_Run, int]:
        scheduler = self.scheduler
        if scheduler is None:
            raise ValueError(
                "ModelRouter has no scheduler: pass `scheduler=pipe.scheduler` (or use apply_flowblending_)."
            )
        run = self._run
        if run is None or run.scheduler is not scheduler or run.timesteps is not scheduler.timesteps:
            run = self._start_run(scheduler)
        step = self._locate(scheduler, run.plan.view, args, kwargs)
        if step < run.last_step:  # the same grid walked again: a custom loop starting over
            run = self._start_run(scheduler)
        if step < run.plan.first_step:
            raise RuntimeError(f"solver step {step} precedes this run's first step {run.plan.first_step}.")
        model = run.plan.model_of_step(step)
        self._enter_model(run, model, step)
        run.last_step = step
        return run, step

    def _enter_model(self, run: _Run, model: str, step: int) -> None:
        """Switch bookkeeping shared by the hook and the k-diffusion path: reset, then tell listeners."""
        if model == run.current_model:
            return
        switching = run.current_model is not None
        if switching and self.reset_on_switch:
            self._reset_model(model)
        run.current_model = model
        self._notify("on_segment_start", model, step, switching)

    def add_listener(self, listener: Any) -> None:
        """Register an object told about runs and segments (accelerators use this to keep caches right).

        Any of these methods is called when present: ``on_run_start(router, plan)``,
        ``on_segment_start(router, model, step, after_switch)``, ``on_call(router, record, args, kwargs,
        output)`` after every denoiser call, and ``on_run_end(router, stats)``.
        """
        self.listeners.append(listener)
        self._call_listeners = any(hasattr(item, "on_call") for item in self.listeners)

    def remove_listener(self, listener: Any) -> None:
        self.listeners.remove(listener)
        self._call_listeners = any(hasattr(item, "on_call") for item in self.listeners)

    def _notify(self, event: str, *args: Any) -> None:
        for listener in self.listeners:
            handler = getattr(listener, event, None)
            if handler is not None:
                handler(self, *args)

    def _start_run(self, scheduler: Any) -> _Run:
        self._close_run()
        view = SolverView.from_scheduler(scheduler)
        plan = Plan.build(self.schedule, view, _first_step(scheduler, view))
        if "small" in self.schedule.models:
            check_placement(self.large, self.small)
        stats = RunStats(
            schedule=str(self.schedule),
            axis=self.schedule.axis,
            scheduler=view.scheduler_name,
            num_steps=len(plan.steps),
            planned_steps=plan.step_counts(),
        )
        self._reset_model("small")
        self._reset_model("large")
        self._run = _Run(plan, stats, scheduler, scheduler.timesteps, self._timing_mode())
        self._notify("on_run_start", plan)
        return self._run

    def _close_run(self, error: BaseException | None = None) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        run.stats.finished = error is None and run.last_step == run.plan.view.num_steps - 1
        run.stats.aborted = not run.stats.finished
        if error is not None:
            run.stats.error = f"{type(error).__name__}: {error}"
        self.runs.append(run.stats)
        self._notify("on_run_end", run.stats)

    def _reset_model(self, model: str) -> None:
        if model == "small":
            _hooks.reset_cache_state(self.small)
        elif isinstance(self.large, torch.nn.Module):
            _hooks.reset_cache_state(self.large, self.context._context, skip=[self])

    # ---------------------------------------------------------------------------------------- lookup
    def _locate(self, scheduler: Any, view: SolverView, args: tuple, kwargs: dict) -> int:
        iteration = getattr(scheduler, "step_index", None)
        if iteration is None and hasattr(scheduler, "step_index"):
            iteration = getattr(scheduler, "begin_index", None)
        if iteration is not None:
            if iteration >= len(view.step_of_iteration):
                raise RuntimeError(f"scheduler.step_index={iteration} is past its {len(view.timesteps)} timesteps.")
            return view.step_of_iteration[iteration]
        return view.step_for_timestep(self._timestep_value(args, kwargs))

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

    # ------------------------------------------------------------------------------------- execution
    def _call_small(self, *args: Any, **kwargs: Any) -> Any:
        with _hooks.cache_context(self.small, self.context._context):
            return self.small(*args, **kwargs)

    def _execute(self, run: _Run, step: int, model: str, fn: Callable, args: tuple, kwargs: dict,
                 iteration: int | None) -> Any:
        planned = run.plan.steps[step - run.plan.first_step]
        record = CallRecord(step, model, planned.stage, planned.timestep, planned.sigma, iteration)
        timer = _Timer(run.timing)
        try:
            if self.count_flops:
                with FlopCounterMode(display=False) as counter:
                    output = fn(*args, **kwargs)
                record.flops = counter.get_total_flops()
            else:
                output = fn(*args, **kwargs)
        except BaseException as error:
            self._abort(error)
            raise
        events = timer.stop(record)
        run.stats.add(record, events)
        if self._call_listeners:
            self._notify("on_call", record, args, kwargs, output)
        return output

    def _abort(self, error: BaseException) -> None:
        # Leave both models reusable: no half-written cache state survives into the next run.
        self._close_run(error)
        self._reset_model("small")
        self._reset_model("large")

    def _timing_mode(self) -> str:
        if self.timing == "auto":
            device = _device_of(self.large)
            return "cuda" if device is not None and device.type == "cuda" else "host"
        return self.timing


def _first_step(scheduler: Any, view: SolverView) -> int:
    # img2img / video2video pipelines start part-way down the grid and say so with `set_begin_index`; a
    # router on Wan 2.2's second expert first sees a later step, but the run itself still starts at 0.
    begin = getattr(scheduler, "begin_index", None)
    return view.step_of_iteration[begin] if begin is not None and begin < len(view.step_of_iteration) else 0


class _Timer:
    """Host clock per call, or a CUDA event pair resolved after the run (no sync inside the loop)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        if mode == "cuda":
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)
            self.start.record()
        elif mode == "host":
            self.start = time.perf_counter()

    def stop(self, record: CallRecord) -> tuple[Any, Any] | None:
        if self.mode == "cuda":
            self.end.record()
            return self.start, self.end
        if self.mode == "host":
            record.seconds = time.perf_counter() - self.start
        return None


def _device_of(module: Any) -> torch.device | None:
    if isinstance(module, torch.nn.Module):
        for parameter in module.parameters():
            return parameter.device
    return None


def _dtype_of(module: Any) -> torch.dtype | None:
    if isinstance(module, torch.nn.Module):
        for parameter in module.parameters():
            if parameter.is_floating_point():
                return parameter.dtype
    return None


def check_placement(large: Any, small: Any) -> None:
    """Fail before denoising when the pair sits on different devices or dtypes."""
    if not (isinstance(large, torch.nn.Module) and isinstance(small, torch.nn.Module)):
        return
    if hasattr(large, "_hf_hook") or hasattr(small, "_hf_hook"):
        return  # accelerate offload moves weights per call; placement is its business
    large_device, small_device = _device_of(large), _device_of(small)
    if None not in (large_device, small_device) and large_device != small_device:
        raise ValueError(
            f"small model is on {small_device} but the large model is on {large_device}: "
            f"call `small.to('{large_device}')` (pipe.to() moves only the pipeline's own components)."
        )
    large_dtype, small_dtype = _dtype_of(large), _dtype_of(small)
    if None not in (large_dtype, small_dtype) and large_dtype != small_dtype:
        raise ValueError(
            f"small model dtype is {small_dtype} but the large model's is {large_dtype}: the pipeline casts "
            f"inputs to the large model's dtype, so call `small.to(dtype={large_dtype})`."
        )
