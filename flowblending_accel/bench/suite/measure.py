"""The suite's measurements of one row: its warm-up run, its timed runs and their FLOPs.

FLOPs come from one counted call per model (on the arguments the baseline's warm-up gave the large model
first) times the calls of a run; a call's work does not depend on its step. Where a feature cache skips
blocks, the repeated blocks' share of a call is scaled by the share of attention that computed, which an
attention meter reads during the row's (eager) warm-up; a compiled row takes it from an eager row with the
same cache, and says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ...accelerators import Accelerator, RoutedModels, as_configs
from ...core.schedule import Schedule
from ...metrics.attention import AttentionMeter
from ...metrics.flops import capture_first_call, count_call
from ...support.memory import host_peak_bytes, reset_host_peak
from ..runner import Row, run_row
from .plan import BASELINE, SuiteRow

UNCOUNTED_KINDS = ("compile", "engine")  # hooks inside compiled code would change what is timed


@dataclass
class RowState:
    """A row across the section's rounds: its accelerators (created once, so their counters span the
    rounds), its last time, and what its warm-up found."""

    row: SuiteRow
    specs: tuple[str, ...]
    shared: dict[str, Accelerator] = field(default_factory=dict, repr=False)
    accelerators: list[Accelerator] = field(default_factory=list)
    last_seconds: float | None = None  # the whole last run, applying and removing the stack included
    dropped: bool = False
    warmed: bool = False
    computed_share: dict[str, float] | None = None  # attention that computed, per model (cached rows)
    first_call: dict[str, Any] | None = None  # the baseline's first large-model call

    def __post_init__(self) -> None:
        self.configs = as_configs(self.specs)
        self.runner_row = Row(self.row.label, Schedule.parse(self.row.schedule), tuple(self.configs))
        self.accelerators = [self._accelerator(config.for_rounds()) for config in self.configs]

    def _accelerator(self, config) -> Accelerator:
        """A fresh accelerator per row, but one quantizer per spec for the section: every row that
        quantizes swaps the same quantized weights in (one copy on the device, one quantization)."""
        if config.kind != "quantize":
            return config.create()
        return self.shared.setdefault(config.spec, config.create())

    @property
    def cache_specs(self) -> set[str]:
        return {config.spec for config in self.configs if config.kind == "cache"}

    @property
    def eager(self) -> bool:
        return not any(config.kind in UNCOUNTED_KINDS for config in self.configs)


def run_warmup(target, state: RowState) -> dict[str, Any]:
    """``state``'s untimed first run; the baseline's records its first large-model call, an eager cached
    row's the share of attention that computed."""
    meter = None
    if state.cache_specs and state.eager:
        meter = AttentionMeter(RoutedModels.of(target.pipe, target.small).models())
    reset_host_peak()
    start = time.perf_counter()
    try:
        with capture_first_call(target.large) as call:
            run = run_row(target, state.runner_row, state.accelerators, listeners=(meter,) if meter else ())
    finally:
        if meter is not None:
            meter.remove()
    wall = time.perf_counter() - start
    if state.row == BASELINE:
        state.first_call = call
    if meter is not None:
        summary = meter.summary()
        state.computed_share = {
            key.split(".", 1)[1]: 1.0 - value
            for key, value in summary.items()
            if key.startswith("attention_skipped.")
        }
    for accelerator in state.accelerators:
        accelerator.mark_warm()
    state.warmed = True
    if not state.row.kinds() & {"compile", "quantize", "engine"}:  # a plain run: what a timed one costs
        state.last_seconds = wall
    return {
        "seconds": run.seconds,
        "wall_seconds": wall,
        "graphs": run.graphs,
        "calls": run.calls,
        "peak_cuda_bytes": run.peak_memory,
        "peak_host_bytes": host_peak_bytes(),
        "attention_computed": state.computed_share,
    }


def count_flops(target, states: list[RowState]) -> dict[str, Any]:
    """FLOPs of one call per model, on the baseline's first large-model call, and their repeated blocks'
    share."""
    import torch

    baseline = next(state for state in states if state.row == BASELINE)
    call = baseline.first_call or {}
    if "kwargs" not in call:
        raise RuntimeError("the baseline's warm-up made no large-model call to count")
    with torch.inference_mode():
        counts = {
            label: count_call(model, call["args"], call["kwargs"])
            for label, model in (("large", target.large), ("small", target.small))
        }
    return {
        label: {"per_call": count.flops, "blocks_per_call": count.block_flops}
        for label, count in counts.items()
    }


def _computed_share(state: RowState, states: list[RowState]) -> tuple[dict[str, float], str]:
    if not state.cache_specs:
        return {}, "calls x one counted call per model"
    if state.computed_share is not None:
        return state.computed_share, "calls x counted call, blocks scaled by the attention computed (meter)"
    for other in states:
        if other.computed_share is not None and other.cache_specs == state.cache_specs:
            return other.computed_share, (
                f"calls x counted call, blocks scaled by the attention computed in row '{other.row.label}'"
            )
    return {}, "calls x counted call: cache hits not counted (no eager row with this cache)"


def flops_from_calls(calls: dict[str, int], flops: dict[str, Any], share: dict[str, float]) -> dict[str, int]:
    """A row's FLOPs per model from its calls and one counted call each (blocks scaled by ``share``)."""
    found = {}
    for model, count in calls.items():
        per_call, blocks = flops[model]["per_call"], flops[model]["blocks_per_call"]
        found[model] = round(count * (per_call - blocks + share.get(model, 1.0) * blocks))
    found["total"] = sum(found.values())
    return found


def run_timed(target, state: RowState, flops: dict[str, Any], states: list[RowState]) -> dict[str, Any]:
    """One timed run of ``state``'s row, as a ``sample`` line's fields."""
    reset_host_peak()
    start = time.perf_counter()
    run = run_row(target, state.runner_row, state.accelerators)
    state.last_seconds = time.perf_counter() - start
    share, basis = _computed_share(state, states)
    return {
        "row": state.row.label,
        "schedule": state.row.schedule,
        "stack": list(state.specs),
        "seconds": run.seconds,
        "model_seconds": run.model_seconds,
        "calls": run.calls,
        "steps": run.steps,
        "flops": flops_from_calls(run.calls, flops, share),
        "flops_basis": basis,
        "peak_cuda_bytes": run.peak_memory,
        "peak_host_bytes": host_peak_bytes(),
        "recompiles": run.graphs,
        "counters": run.counters,
        "accelerators": run.described,
    }
