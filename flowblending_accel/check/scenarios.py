"""Deterministic scenarios for the CI gate and the metrics they yield (no timing in this tier).

A scenario builds a pipeline and a small model, applies a schedule and a stack, runs a warm-up call and a
measured call, and reports counts that do not depend on the machine: denoiser calls per model and per stage,
FLOPs per model, a hash of the routing trace, recompiles and graph breaks after the warm-up, the share of
attention work the caches skipped, and whether every segment started with a full compute (no state reused
from before a switch).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..accelerators import apply_stack, remove_stack
from ..accelerators.compile import dynamo_counts
from ..meter import AttentionMeter


@dataclass(frozen=True)
class Scenario:
    name: str
    build: Callable[[], tuple[Any, Any, Callable[[], dict[str, Any]], str]]  # pipe, small, call kwargs, field
    schedule: str
    stack: tuple[str, ...] = ()
    ratio_baseline: str | None = None  # for the ratio tier: the schedule whose time this one divides


def _tiny_wan():
    from ..testing import tiny_wan_pair, tiny_wan_pipeline, wan_call_kwargs

    large, small = tiny_wan_pair()
    return tiny_wan_pipeline(large), small, lambda: wan_call_kwargs(steps=10), "frames"


def _embedded():
    from ..demo.calibration import demo_calls
    from ..demo.models import load_demo_pipeline

    pipe, small = load_demo_pipeline()
    prompts = ["a 3 moving right", "a 7 moving left", "a 0 moving up", "a 5 moving down"]
    return pipe, small, lambda: demo_calls(prompts, [0], 20, 3.0)[0], "frames"


SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario("tiny-lsl", _tiny_wan, "L40-S40-L20"),
        Scenario("tiny-fbc", _tiny_wan, "L40-S40-L20", ("fbc:0.5",)),
        Scenario("tiny-compile", _tiny_wan, "L40-S40-L20", ("compile",)),
        Scenario("embedded-lsl", _embedded, "L40-S40-L20", ratio_baseline="L100"),
        Scenario("embedded-stack", _embedded, "L40-S40-L20", ("dpm++:10", "fbc:0.2"), ratio_baseline="L100"),
    )
}


def trace_hash(trace: list[tuple[int, str]]) -> str:
    return hashlib.sha256(repr(trace).encode()).hexdigest()[:16]


def run_scenario(scenario: Scenario, inject: Callable[[], None] | None = None) -> dict[str, Any]:
    """Warm-up call, measured call (and a FLOP-counting call); ``inject`` runs between warm-up and measure."""
    pipe, small, call_kwargs, field = scenario.build()
    metrics: dict[str, Any] = {}
    router, stack = apply_stack(pipe, small, scenario.schedule, list(scenario.stack))
    try:
        with torch.inference_mode():
            getattr(pipe(**call_kwargs()), field)  # warm-up: every model, stage, branch and graph
            if inject is not None:
                inject()
            before = dynamo_counts()
            compiled = any(a.kind == "compile" for a in stack.accelerators)
            meter = None if compiled else AttentionMeter(router, {"large": pipe.transformer, "small": small})
            if meter is not None:
                router.add_listener(meter)
            getattr(pipe(**call_kwargs()), field)
            after = dynamo_counts()
            stats = router.last_run
            if meter is not None:
                meter.remove()
                metrics.update(meter.summary())
    finally:
        remove_stack(pipe)
    metrics.update({f"calls.{m}": n for m, n in sorted(stats.calls_per_model.items())})
    for stage in sorted({c.stage for c in stats.calls}):
        metrics[f"stage_calls.{stage}"] = sum(1 for c in stats.calls if c.stage == stage)
    metrics["trace_hash"] = trace_hash(stats.trace)
    metrics["recompiles_after_warmup"] = after["graphs"] - before["graphs"]
    metrics["graph_breaks_after_warmup"] = after["graph_breaks"] - before["graph_breaks"]
    metrics.update(_flops(scenario))
    return metrics


def _flops(scenario: Scenario) -> dict[str, int]:
    pipe, small, call_kwargs, field = scenario.build()
    eager = [s for s in scenario.stack if s != "compile"]
    router, _ = apply_stack(pipe, small, scenario.schedule, eager, count_flops=True, timing="off")
    try:
        with torch.inference_mode():
            getattr(pipe(**call_kwargs()), field)
        return {f"flops.{m}": int(v) for m, v in sorted(router.last_run.flops_per_model.items())}
    finally:
        remove_stack(pipe)
