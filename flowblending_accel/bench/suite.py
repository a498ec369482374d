"""The GPU evidence suite: one command that measures the real-size stack on a CUDA machine, and the same code
on tiny presets on a CPU (``dry-run``) so the suite is tested wherever the tests run.

Sections, in order, each time-boxed and written (suite.json, suite.md, suite.png) as soon as it ends, so a
kill keeps what was measured:

* ``environment``: device, compute capability, memory, driver, CUDA runtime, library versions;
* ``router_overhead``: routed all-large vs unwrapped per denoiser call (CUDA events), and the router's own
  cost in isolation;
* ``wan``: Wan 2.1 14B + 1.3B (random weights, bf16): large-only, L40-S40-L20 against the time-ideal from
  the measured per-model call times, then + DPM++ at half the steps, + FirstBlockCache, + regional compile
  (recompiles after warm-up counted), + the best attention backend, + torchao quantization; TensorRT when it
  is importable, else a skipped row with the reason;
* ``wan_individual``: each accelerator alone on top of FlowBlending, for stacked ÷ product of the
  individual speedups;
* ``ltx``: LTX-Video 13B + 2B large-only vs routed;
* ``memory``: peak memory with both models resident vs the offload-with-prefetch mode, and its time.

Ratios do not need 50 steps: 10 keeps every stage of L40-S40-L20 non-empty (4-4-2), and 5 after the step
reduction (2-2-1).
"""

from __future__ import annotations

import gc
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch

from ..accelerators import as_configs, best_attention_backend
from ..support.env import accelerator_details, versions
from ..targets.presets import preset_target
from .overhead import isolated_router_cost, pipeline_overhead
from .runner import PROBE, Row, cumulative_rows, measure_rows, summarise

SCHEDULE = "L40-S40-L20"
SECTIONS = ("environment", "router_overhead", "wan", "wan_individual", "ltx", "memory")


@dataclass(frozen=True)
class SuiteSize:
    """How big each section runs, and its time box in seconds."""

    name: str
    device: str
    dtype: str
    wan: str
    ltx: str
    wan_size: tuple[int, int, int]  # height, width, frames
    ltx_size: tuple[int, int, int]
    steps: int
    repeats: int
    overhead_repeats: int
    boxes: dict[str, float] = field(default_factory=dict)
    total_seconds: float = 360.0


SUITES = {
    # One H100-class GPU: about 6 minutes in all (Wan 14B at 480x832, 17 frames: 7,800 tokens a call).
    "gpu": SuiteSize(
        "gpu",
        "cuda",
        "bfloat16",
        "wan2.1-14b+1.3b",
        "ltx-13b+2b",
        (480, 832, 17),
        (480, 704, 25),
        10,
        3,
        20,
        {"router_overhead": 30, "wan": 150, "wan_individual": 80, "ltx": 45, "memory": 40},
    ),
    # The same code path on tiny random presets on a CPU, for the test suite.
    "dry-run": SuiteSize(
        "dry-run",
        "cpu",
        "float32",
        "tiny-wan",
        "tiny-ltx",
        (16, 16, 5),
        (32, 32, 9),
        10,
        1,
        3,
        {"router_overhead": 60, "wan": 240, "wan_individual": 240, "ltx": 60, "memory": 60},
        900,
    ),
}


@dataclass
class Section:
    name: str
    status: str = "not run"  # done, skipped, failed, interrupted
    started: str | None = None
    seconds: float | None = None
    result: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _interrupt(signum, frame) -> None:  # a timeout's SIGTERM ends like Ctrl-C: finished work is written
    raise KeyboardInterrupt


def run_suite(size: SuiteSize, write, progress=None) -> dict[str, Section]:
    """Run every section in order; ``write(sections)`` after each one."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    sections = {name: Section(name) for name in SECTIONS}
    suite_end = time.monotonic() + size.total_seconds
    try:
        for name in SECTIONS:
            section, start = sections[name], time.monotonic()
            section.started = _now()
            deadline = min(suite_end, start + size.boxes.get(name, size.total_seconds))
            if name != "environment" and time.monotonic() > suite_end:
                section.status, section.reason = "skipped", "the suite's time box was spent"
            else:
                try:
                    torch._dynamo.reset()  # each section builds its own models: no graphs of the last one's
                    section.result = RUNNERS[name](size, deadline, sections)
                    section.status = "done"
                except KeyboardInterrupt:
                    section.status, section.reason = "interrupted", "stopped by a signal or Ctrl-C"
                    raise
                except Exception as error:  # one broken section must not lose the others' numbers
                    section.status, section.reason = "failed", f"{type(error).__name__}: {error}"
                finally:
                    section.seconds = round(time.monotonic() - start, 1)
                    gc.collect()  # the section's models go before the next section builds its own
                    if size.device.startswith("cuda"):
                        torch.cuda.empty_cache()
            write(sections)
            if progress is not None:
                progress(1)
    except KeyboardInterrupt:
        write(sections)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return sections


def _environment(size: SuiteSize, deadline: float, sections) -> dict[str, Any]:
    return {**accelerator_details(size.device), "versions": versions(), "size": asdict(size)}


def _target(size: SuiteSize, preset: str, dimensions: tuple[int, int, int]):
    height, width, frames = dimensions
    dtype = getattr(torch, size.dtype)
    return preset_target(preset, size.device, dtype, height, width, frames, size.steps)


def _router_overhead(size: SuiteSize, deadline: float, sections) -> dict[str, Any]:
    target = preset_target("tiny-wan", size.device, getattr(torch, size.dtype), steps=20)
    return {
        "pipeline": pipeline_overhead(target, size.overhead_repeats),
        "isolated": isolated_router_cost(size.overhead_repeats * 5, 20),
        "note": "tiny Wan pipeline: launch-bound calls, the worst case for a Python hook",
    }


def wan_stack(size: SuiteSize) -> tuple[list[str], list[dict[str, str]]]:
    """The cumulative stack that runs here, and the members that cannot (with the reason)."""
    wanted = [
        f"dpm++:{size.steps // 2}",
        "fbc:0.05",
        "compile",
        f"attn:{best_attention_backend(size.device)}",
        "quantize:auto",
    ]
    runs, skipped = [], []
    for spec, config in zip(wanted, as_configs(wanted), strict=True):
        try:
            config.check_environment(size.device)
            runs.append(spec)
        except ValueError as error:
            skipped.append({"row": f"+{spec}", "reason": str(error)})
    return runs, skipped


def _tensorrt_row(size: SuiteSize, runs: list[str]) -> tuple[list[Row], list[dict[str, str]]]:
    try:
        as_configs(["tensorrt"])[0].check_environment(size.device)
    except ValueError as error:
        return [], [{"row": "+tensorrt (instead of the cache and compile)", "reason": str(error)}]
    return [Row("+FlowBlending +step reduction +tensorrt", SCHEDULE, (runs[0], "tensorrt"))], []


def _measure(target, rows: list[Row], size: SuiteSize, deadline: float) -> list[dict[str, Any]]:
    results = measure_rows(target, rows, size.repeats, deadline=deadline, count_flops="derived")
    return summarise(results, lambda *_: None)


def _wan(size: SuiteSize, deadline: float, sections) -> dict[str, Any]:
    target = _target(size, size.wan, size.wan_size)
    runs, skipped = wan_stack(size)
    trt_rows, trt_skipped = _tensorrt_row(size, runs)
    table = _measure(target, cumulative_rows(SCHEDULE, runs) + trt_rows, size, deadline)
    blended, full = table[1], table[len(runs) + 1]
    return {
        "target": target.description,
        "rows": table,
        "skipped_rows": skipped + trt_skipped,
        "flowblending": _headline(blended),
        "full_stack": {**_headline(full), "stack": runs},
    }


def _headline(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "speedup": row["speedup"]["median"],
        "time_ideal": row["ideal_speedup"],
        "efficiency": row["efficiency"],
        "flops_vs_baseline": 1 / row["flop_reduction"] if row["flop_reduction"] else None,
        "recompiles_after_warmup": row["recompiles_after_warmup"],
    }


def _wan_individual(size: SuiteSize, deadline: float, sections) -> dict[str, Any]:
    wan = sections["wan"]
    if wan.status != "done":
        raise RuntimeError("needs the wan section's full-stack speedup, which did not finish")
    runs = wan.result["full_stack"]["stack"]
    target = _target(size, size.wan, size.wan_size)
    rows = cumulative_rows(SCHEDULE, [])
    rows += [Row(f"+FlowBlending +{spec}", SCHEDULE, (spec,)) for spec in runs]
    table = _measure(target, rows, size, deadline)
    alone = table[1]["speedup"]["median"]
    factors = {spec: row["speedup"]["median"] / alone for spec, row in zip(runs, table[2:], strict=True)}
    product = alone * math.prod(factors.values())
    stacked = wan.result["full_stack"]["speedup"]
    return {
        "rows": table,
        "factor_over_flowblending": factors,
        "product_of_individual_speedups": product,
        "stacked_speedup": stacked,
        "stacked_over_product": stacked / product,
    }


def _ltx(size: SuiteSize, deadline: float, sections) -> dict[str, Any]:
    target = _target(size, size.ltx, size.ltx_size)
    table = _measure(target, cumulative_rows(SCHEDULE, []), size, deadline)
    return {"target": target.description, "rows": table, "flowblending": _headline(table[1])}


def _memory(size: SuiteSize, deadline: float, sections) -> dict[str, Any]:
    target = _target(size, size.wan, size.wan_size)
    rows = cumulative_rows(SCHEDULE, [])
    rows[1] = Row("+FlowBlending, both models resident", SCHEDULE)
    rows.append(Row("+FlowBlending, offload with prefetch", SCHEDULE, ("offload:1",)))
    table = _measure(target, rows, size, deadline)
    _, resident, offload = table
    return {
        "rows": table,
        "peak_memory_bytes": {
            "resident": resident["peak_memory_bytes"],
            "offload": offload["peak_memory_bytes"],
        },
        "offload_speed_vs_resident": resident["seconds"]["median"] / offload["seconds"]["median"],
        "offload_counters": offload["counters"].get("offload", {}),
    }


RUNNERS = {
    "environment": _environment,
    "router_overhead": _router_overhead,
    "wan": _wan,
    "wan_individual": _wan_individual,
    "ltx": _ltx,
    "memory": _memory,
}

__all__ = ["PROBE", "SECTIONS", "SUITES", "Section", "SuiteSize", "run_suite", "wan_stack"]
