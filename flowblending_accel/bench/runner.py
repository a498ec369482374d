"""The one-run stack benchmark: baseline, +FlowBlending, then each accelerator added on top, cumulatively.

Rows are measured in one process, interleaved: every round applies each row's stack in turn (order rotated
round by round), times one pipeline call with the same seed, and removes the stack again. A first, untimed
round is the warm-up: it runs every row in full, so every model x stage x CFG branch (and every compiled
graph) has run before timing starts. Speedups are medians over rounds of the baseline's time divided by the
row's time *in the same round*. FLOPs come from a separate eager pass (``torch.utils.flop_counter``, so cache
hits count as the work they save); they are never called a speedup.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..accelerators import (
    Accelerator,
    AcceleratorConfig,
    FlowBlendingConfig,
    RoutedModels,
    Stack,
    applied_stack,
    dynamo_counts,
    flowblending,
)
from ..core.api import RouterListener, add_flowblending_listener, flowblending_stats
from ..core.schedule import Schedule
from ..metrics.attention import AttentionMeter
from ..metrics.flops import run_flops
from ..targets import Target

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

PROBE = "small only (probe)"
LARGE_ONLY = Schedule.parse("L100")
SMALL_ONLY = Schedule.parse("S100")


@dataclass(frozen=True)
class Row:
    """One measured configuration: parsed once where the user gave it, never turned back into text."""

    label: str
    schedule: Schedule
    stack: tuple[AcceleratorConfig, ...] = ()

    @property
    def cached(self) -> bool:
        return any(config.kind == "cache" for config in self.stack)


def cumulative_rows(schedule: Schedule, stack: list[AcceleratorConfig]) -> list[Row]:
    """Baseline, +FlowBlending, then one row per accelerator added to the row before (the caller has checked
    that the whole stack can run here: a row that cannot is refused before any model is built)."""
    rows = [Row("baseline (large only)", LARGE_ONLY), Row(f"+FlowBlending {schedule.as_written}", schedule)]
    for index, config in enumerate(stack):
        rows.append(Row(f"+{config.as_written}", schedule, tuple(stack[: index + 1])))
    return rows


@dataclass
class RowMeasurement:
    """One row's timings and counts. Its accelerators are created once and re-applied every round, so their
    counters (graphs compiled at warm-up, recompiles after it) span the whole measurement."""

    row: Row
    accelerators: list[Accelerator] = field(default_factory=list)
    stack: Stack = field(init=False)  # the accelerators as one stack, checked once against the models
    seconds: list[float] = field(default_factory=list)
    model_seconds: list[dict[str, float]] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    steps: int = 0
    peak_memory: int | None = None
    graphs_after_warmup: int = 0
    output: Any = None
    described: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, Any] = field(default_factory=dict)
    flops: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stack = Stack(self.accelerators)


def timed_call(target: Target, kwargs: dict[str, Any]) -> tuple[float, Any, int | None]:
    """One pipeline call: seconds (CUDA events on a GPU), the output, CUDA's peak memory (None on a CPU)."""
    if target.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        output = target.output(target.pipe(**kwargs))
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0, output, torch.cuda.max_memory_allocated()
    start = time.perf_counter()
    output = target.output(target.pipe(**kwargs))
    return time.perf_counter() - start, output, None


@dataclass
class RowRun:
    """One pipeline call of one row with its stack applied: what ``run_row`` measured."""

    seconds: float
    output: Any
    peak_memory: int | None
    graphs: int  # graphs compiled during the call
    model_seconds: dict[str, float]
    calls: dict[str, int]
    steps: int
    described: list[dict[str, Any]]
    counters: dict[str, Any]


def run_row(
    target: Target,
    row: Row,
    accelerators: list[Accelerator] | Stack,
    seed: int = 0,
    listeners: tuple[RouterListener, ...] = (),
    inspect: Callable[[DiffusionPipeline], None] | None = None,
) -> RowRun:
    """Apply ``row``'s schedule and ``accelerators``, time one call of ``target``'s workload under ``seed``,
    remove them again. ``listeners`` follow the run; ``inspect(pipe)`` runs while the stack is still on."""
    with flowblending(target.pipe, target.small, FlowBlendingConfig(row.schedule, accelerators=accelerators)):
        stack = applied_stack(target.pipe)
        for listener in listeners:
            add_flowblending_listener(target.pipe, listener)
        kwargs = stack.without_owned(target.call_kwargs(seed))
        graphs_before = dynamo_counts()["graphs"]
        seconds, output, peak = timed_call(target, kwargs)
        graphs = dynamo_counts()["graphs"] - graphs_before
        stats = flowblending_stats(target.pipe)
        if inspect is not None:
            inspect(target.pipe)
        return RowRun(
            seconds,
            output,
            peak,
            graphs,
            stats.seconds_per_model,
            stats.calls_per_model,
            stats.num_steps,
            stack.describe(),
            stack.counters(),
        )


def _run_row(target: Target, measurement: RowMeasurement, timed: bool, seed: int) -> None:
    run = run_row(target, measurement.row, measurement.stack, seed)
    if not timed:
        return
    measurement.graphs_after_warmup += run.graphs
    measurement.seconds.append(run.seconds)
    measurement.model_seconds.append(run.model_seconds)
    measurement.calls, measurement.steps = run.calls, run.steps
    measurement.peak_memory = max(filter(None, [measurement.peak_memory, run.peak_memory]), default=None)
    measurement.described, measurement.counters = run.described, run.counters
    if measurement.output is None:
        measurement.output = run.output


def _flop_pass(target: Target, measurement: RowMeasurement, seed: int) -> None:
    row = measurement.row
    cached = row.cached
    # Cache hits are counted only where a cache runs: the meter's hooks are not free.
    meter = AttentionMeter(RoutedModels.of(target.pipe, target.small).models()) if cached else None
    try:
        kwargs = measurement.stack.without_owned(target.call_kwargs(seed))
        measurement.flops, _ = run_flops(
            target.pipe, target.small, row.schedule, kwargs, row.stack, listeners=(meter,) if meter else ()
        )
        if meter is not None:
            measurement.counters["attention"] = meter.summary()
    finally:
        if meter is not None:
            meter.remove()


def measure_rows(
    target: Target,
    rows: list[Row],
    repeats: int,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,  # support.progress's: it also takes .note(text)
    count_flops: str = "all",
) -> dict[str, RowMeasurement]:
    """Warm-up round, then ``repeats`` interleaved rounds, then the FLOP pass. Ctrl-C (or a SIGTERM made
    into one) stops at once: finished rounds are kept and no FLOP pass runs (the rows have no FLOPs).
    ``count_flops="derived"`` counts only the baseline, the small-only probe and cached rows in an eager
    pass; every other row's FLOPs are its calls times those per-call FLOPs (exact: a call's work does not
    depend on the step it runs at)."""
    everything = rows + [Row(PROBE, SMALL_ONLY)]
    carried = target.stack_members  # what the target's memory mode asks for, under every row's own stack
    results = {
        row.label: RowMeasurement(row, [config.for_rounds().create() for config in (*carried, *row.stack)])
        for row in everything
    }
    models = RoutedModels.of(target.pipe, target.small)
    for measurement in results.values():  # every row's stack checked once, before any work
        measurement.stack.validate(models)
    with torch.inference_mode():
        try:
            for round_index in range(repeats + 1):
                shift = round_index % len(everything)
                for row in everything[shift:] + everything[:shift]:
                    if round_index == 0 and progress is not None:  # a compile or a quantize can take minutes
                        progress.note(f"warm-up: {row.label}{_warm_up_work(row)}")
                    _run_row(target, results[row.label], timed=round_index > 0, seed=seed)
                    if progress is not None:
                        progress(1)
                if round_index == 0:  # every model, stage, branch and graph has run: the rest is warm
                    for measurement in results.values():
                        for accelerator in measurement.accelerators:
                            accelerator.mark_warm()
        except KeyboardInterrupt:
            _keep_complete_rounds(results)
            return results
    counted = [row for row in everything if count_flops == "all" or _needs_flop_pass(row, rows)]
    for row in counted:
        _flop_pass(target, results[row.label], seed)
        if progress is not None:
            progress(1)
    if count_flops != "all":
        _derive_flops(results, rows[0], [row for row in everything if row not in counted])
    return results


WARM_UP_WORK = {"compile": "compiles the models", "quantize": "quantizes them", "engine": "builds engines"}


def _warm_up_work(row: Row) -> str:
    """What a row's warm-up does beyond a plain run (it may take minutes), for the progress line."""
    heavy = [WARM_UP_WORK[config.kind] for config in row.stack if config.kind in WARM_UP_WORK]
    return f" ({', '.join(heavy)})" if heavy else ""


def _needs_flop_pass(row: Row, rows: list[Row]) -> bool:
    return row is rows[0] or row.label == PROBE or row.cached


def _derive_flops(results: dict[str, RowMeasurement], baseline: Row, rows: list[Row]) -> None:
    base, probe = results[baseline.label], results[PROBE]
    per_call = {
        "large": base.flops.get("large", 0) / max(base.calls.get("large", 0), 1),
        "small": probe.flops.get("small", 0) / max(probe.calls.get("small", 0), 1),
    }
    for row in rows:
        measurement = results[row.label]
        measurement.flops = {m: round(n * per_call.get(m, 0)) for m, n in measurement.calls.items()}


def _keep_complete_rounds(results: dict[str, RowMeasurement]) -> None:
    done = min(len(m.seconds) for m in results.values())
    for measurement in results.values():
        del measurement.seconds[done:], measurement.model_seconds[done:]


def spread(values: list[float]) -> dict[str, float]:
    """Median and quartiles (the extremes when fewer than two values)."""
    if len(values) < 2:
        return {"median": values[0], "q1": values[0], "q3": values[0]}
    q1, _, q3 = statistics.quantiles(values, n=4)
    return {"median": statistics.median(values), "q1": q1, "q3": q3}


def per_call_seconds(measurement: RowMeasurement, model: str) -> float:
    values = [
        m.get(model, 0.0) / measurement.calls[model]
        for m in measurement.model_seconds
        if measurement.calls.get(model)
    ]
    return statistics.median(values) if values else float("nan")


def summarise(results: dict[str, RowMeasurement], quality) -> list[dict[str, Any]]:
    """Table rows: time, speedup, calls, FLOPs, ideal and efficiency, memory, recompiles, quality."""
    rows = [m for label, m in results.items() if label != PROBE]
    baseline = rows[0]
    t_large = per_call_seconds(baseline, "large")
    t_small = per_call_seconds(results[PROBE], "small")
    base_time = statistics.median(baseline.seconds)
    outside = base_time - baseline.calls.get("large", 0) * t_large  # text, VAE, scheduler: not denoiser calls
    base_flops = sum(baseline.flops.values())
    table = []
    for m in rows:
        ratios = [b / s for b, s in zip(baseline.seconds, m.seconds, strict=False)]
        step_scale = m.steps / baseline.steps if baseline.steps else 1.0
        ideal_time = (
            outside * step_scale + m.calls.get("large", 0) * t_large + m.calls.get("small", 0) * t_small
        )
        ideal = base_time / ideal_time
        flops = sum(m.flops.values())
        table.append(
            {
                "label": m.row.label,
                "schedule": m.row.schedule.as_written,
                "stack": [config.as_written for config in m.row.stack],
                "accelerators": m.described,
                "seconds": {**spread(m.seconds), "all": m.seconds},
                "speedup": spread(ratios),
                "calls": m.calls,
                "steps": m.steps,
                "flops": {**m.flops, "total": flops},
                "flop_reduction": base_flops / flops if flops else None,  # baseline FLOPs / row FLOPs
                "ideal_speedup": ideal,
                "efficiency": statistics.median(ratios) / ideal,
                "peak_memory_bytes": m.peak_memory,
                "recompiles_after_warmup": m.graphs_after_warmup,
                "counters": m.counters,
                "quality": quality(m.output, baseline.output) if m is not baseline else None,
            }
        )
    return table
