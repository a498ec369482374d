"""Deterministic scenarios for the CI gate and the metrics they yield (no timing in this tier).

A scenario is a target, a schedule and a stack. It runs a warm-up call and a measured call and reports
counts that do not depend on the machine: denoiser calls per model and per stage, FLOPs per model, a hash
of the routing trace, recompiles and graph breaks after the warm-up, the share of attention work the caches
skipped, and whether every segment started with a full compute (no state reused from before a switch).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..accelerators import (
    AcceleratorConfig,
    FlowBlendingConfig,
    RoutedModels,
    applied_stack,
    as_configs,
    dynamo_counts,
    flowblending,
)
from ..core.api import add_flowblending_listener, flowblending_stats
from ..core.schedule import PAPER_SCHEDULE, Schedule
from ..metrics.attention import AttentionMeter
from ..metrics.flops import run_flops
from ..targets import Target

GRID_PROMPTS = ["a 3 moving right", "a 7 moving left", "a 0 moving up", "a 5 moving down"]


@dataclass(frozen=True)
class Scenario:
    """A target (built on demand), a schedule, a stack, which metrics to gate (prefixes; ``None``: all) and,
    for the ratio tier, the schedule whose time this one divides."""

    name: str
    build: Callable[[], Target]
    schedule: Schedule
    stack: tuple[AcceleratorConfig, ...] = ()
    ratio_baseline: Schedule | None = None
    metrics: tuple[str, ...] | None = None

    @classmethod
    def written(
        cls,
        name: str,
        build: Callable[[], Target],
        schedule: str,
        stack: tuple[str, ...] = (),
        ratio_baseline: str | None = None,
        metrics: tuple[str, ...] | None = None,
    ) -> Scenario:
        """A scenario from its text (the config file's, the command line's): parsed here, once."""
        baseline = Schedule.parse(ratio_baseline) if ratio_baseline else None
        return cls(name, build, Schedule.parse(schedule), tuple(as_configs(stack)), baseline, metrics)


def _tiny_wan() -> Target:
    from ..targets.tiny import tiny_target

    return tiny_target("wan", steps=10)


def _embedded() -> Target:
    from ..targets.embedded import embedded_target

    return embedded_target(prompts=GRID_PROMPTS)


SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario.written("tiny-lsl", _tiny_wan, PAPER_SCHEDULE),
        Scenario.written("tiny-fbc", _tiny_wan, PAPER_SCHEDULE, ("fbc:0.5",)),
        Scenario.written("tiny-compile", _tiny_wan, PAPER_SCHEDULE, ("compile",)),
        Scenario.written("embedded-lsl", _embedded, PAPER_SCHEDULE, ratio_baseline="L100"),
        Scenario.written("embedded-stack", _embedded, PAPER_SCHEDULE, ("dpm++:10", "fbc:0.2"), "L100"),
    )
}


def user_scenarios(config, flags: dict[str, Any]) -> dict[str, Scenario]:
    """The config file's ``[[check.scenarios]]``: each a target (the file's settings, the scenario's own
    over them, command-line flags over both), a schedule, a stack and the metrics to gate."""
    return {entry["name"]: user_scenario(entry, config, flags) for entry in config.check.get("scenarios", [])}


def user_scenario(entry: dict[str, Any], config, flags: dict[str, Any]) -> Scenario:
    """One scenario from a config entry (or the command line's target); checked, not built."""
    from ..accelerators import validate_configs, validate_for_family
    from ..targets.options import OWN_TARGET_KEYS, TargetOptions
    from ..targets.resolve import build_target, check_target, known_family

    inherited = dict(config.values)
    if any(entry.get(key) for key in ("target", "large", "small")):  # its own target: not the file's
        inherited = {k: v for k, v in inherited.items() if k not in OWN_TARGET_KEYS}
    options = TargetOptions.merged(flags, {**inherited, **entry})
    checked = check_target(options)  # every scenario's target is checked before any is built
    scenario = Scenario.written(
        entry["name"],
        lambda: build_target(options, checked),
        entry.get("schedule") or config.get("schedule", PAPER_SCHEDULE),
        tuple(entry.get("stack") or config.get("stack", ())),
        entry.get("ratio_baseline"),
        tuple(entry["metrics"]) if entry.get("metrics") else None,
    )
    validate_configs(list(scenario.stack), options.device)
    known = known_family(options, checked)
    if known is not None:
        validate_for_family(list(scenario.stack), *known)
    return scenario


def trace_hash(trace: list[tuple[int, str]]) -> str:
    return hashlib.sha256(repr(trace).encode()).hexdigest()[:16]


def run_scenario(
    scenario: Scenario, inject: Callable[[], None] | None = None, keep: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Warm-up call, measured call (and a FLOP-counting call); ``inject`` runs between warm-up and measure;
    ``keep``: metric prefixes kept beside the scenario's own (what :func:`ranks_agree` reads)."""
    target = scenario.build()
    configs = (*target.stack_members, *scenario.stack)  # the target's memory mode, then the scenario's stack
    members = [config.for_rounds().create() for config in configs]
    compiled = any(member.kind == "compile" for member in members)
    with flowblending(target.pipe, target.small, FlowBlendingConfig(scenario.schedule, accelerators=members)):
        stack = applied_stack(target.pipe)
        call = lambda: stack.without_owned(target.call_kwargs(0))  # noqa: E731  (fresh generators per call)
        with torch.inference_mode():
            target.output(target.pipe(**call()))  # warm-up: every model and graph
            stack.mark_warm()
            if inject is not None:
                inject()
            before = dynamo_counts()
            meter = None if compiled else AttentionMeter(RoutedModels.of(target.pipe, target.small).models())
            if meter is not None:
                add_flowblending_listener(target.pipe, meter)
            target.output(target.pipe(**call()))
            after = dynamo_counts()
        stats = flowblending_stats(target.pipe)
        if meter is not None:
            meter.remove()
    metrics: dict[str, Any] = meter.summary() if meter is not None else {}
    metrics.update({f"calls.{m}": n for m, n in sorted(stats.calls_per_model.items())})
    for stage in sorted({c.stage for c in stats.calls}):
        metrics[f"stage_calls.{stage}"] = sum(1 for c in stats.calls if c.stage == stage)
    metrics["trace_hash"] = trace_hash(stats.trace)
    metrics["recompiles_after_warmup"] = after["graphs"] - before["graphs"]
    metrics["graph_breaks_after_warmup"] = after["graph_breaks"] - before["graph_breaks"]
    flops, _ = run_flops(target.pipe, target.small, scenario.schedule, call(), scenario.stack)
    metrics.update({f"flops.{m}": v for m, v in flops.items()})
    if scenario.metrics is not None:
        metrics = {name: value for name, value in metrics.items() if name.startswith(scenario.metrics + keep)}
    return metrics


# What ranks_agree reads from every rank, whatever a scenario gates.
RANK_METRICS = ("trace_hash", "flops.")


def ranks_agree(
    measured: dict[str, dict[str, Any]], context: Any, scenarios: list[Scenario]
) -> dict[str, Any]:
    """Under torchrun: rank 0's metrics, plus ``ranks`` (the process count) and ``flops_total.<model>`` (the
    FLOPs of every rank), filtered as each scenario says; a rank whose routing trace differs fails the check
    on every rank. Collective."""
    import torch.distributed as dist

    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, measured)
    for name, metrics in measured.items():
        hashes = [ranked[name].get("trace_hash") for ranked in gathered]
        if len(set(hashes)) > 1:
            raise RuntimeError(f"scenario {name}: the ranks routed differently (trace hashes {hashes}).")
        metrics["ranks"] = context.world_size
        for metric in [m for m in metrics if m.startswith("flops.")]:
            total = sum(ranked[name][metric] for ranked in gathered)
            metrics[f"flops_total.{metric.removeprefix('flops.')}"] = total
    wanted = {scenario.name: scenario.metrics for scenario in scenarios}
    return {
        name: {m: v for m, v in metrics.items() if wanted.get(name) is None or m.startswith(wanted[name])}
        for name, metrics in measured.items()
    }
