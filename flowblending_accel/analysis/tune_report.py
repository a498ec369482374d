"""The files ``tune`` writes: tuned.toml (the chosen schedule and stack as the config file takes them),
tune.md (goal, pick, held-out comparison, frontier, search cost) and tune.png (the Pareto frontier with
the hand-picked schedule and each accelerator alone marked)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, fields
from typing import Any

from .report import cost_lines


@dataclass(frozen=True)
class TuneResult:
    """What ``tune`` found, as tune.json holds it (the fields in its order); tuned.toml, tune.md and
    tune.png render it."""

    command: str
    target: str
    tuned_target: dict[str, Any]  # the target's identity, the settings naming it, those tuned.toml records
    space: dict[str, Any]  # step counts, solver, cache thresholds, small-distilled
    goal: dict[str, Any]  # tolerance, FLOP budget, latency budget
    proxy: dict[str, Any] | None  # the verdict on a pick made at --proxy-size
    match: dict[str, Any]  # the hand-picked schedule and its fit scores
    chosen: dict[str, Any]  # the pick: schedule, stack, message, fit evaluation, loss vs the match
    per_step_count: dict[int, str]
    cost: dict[str, Any]  # the search's pipeline calls and what a grid would have cost
    run: dict[str, Any]  # the wall time and threads of the run
    evaluations: list[dict[str, Any]]
    frontier: list[dict[str, Any]]
    alone: dict[str, dict[str, Any]]  # each accelerator alone, and the --compare points
    grid: dict[str, Any] | None
    held_out: dict[str, Any]  # held-out prompts, seeds and rows
    fit: dict[str, Any]
    timing: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """tune.json: the fields as they are (no copy, no conversion of what they hold)."""
        return {field.name: getattr(self, field.name) for field in fields(self)}


def tuned_toml(result: TuneResult) -> str:
    """The pick as a settings file, with the target it was tuned for: ``--config tuned.toml`` runs on that
    target, and is refused with another."""
    chosen, target = result.chosen, result.tuned_target or {}
    lines = [
        f"# flowblending-accel tune: {chosen['message']}",
        f"# `{result.command}`; copy into flowblending.toml, or pass as --config to bench and check.",
        _tuned_for(target.get("for", {})),
        *[f"{key} = {json.dumps(value)}" for key, value in target.get("settings", {}).items()],
        f"schedule = {json.dumps(chosen['schedule'])}",
        f"stack = {json.dumps(chosen['stack'])}",
    ]
    return "\n".join(line for line in lines if line is not None) + "\n"


def _tuned_for(named: dict[str, Any]) -> str | None:
    """The target the pick holds for, as an inline table of the settings that name it (paths relative to
    the file, as every path in it): a run whose flags name another target is refused."""
    if not named:  # the embedded pair, the default target
        return None
    return "tuned_for = { " + ", ".join(f"{key} = {json.dumps(value)}" for key, value in named.items()) + " }"


def _ci(entry: dict | None) -> str:
    if not entry:
        return "—"
    return f"{entry['mean']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def _scores(scores: dict | None) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in scores.items()) if scores else "rejected on the first call"


def _held_out(rows: dict[str, dict]) -> list[str]:
    names = list(next(r for n, r in rows.items() if n != "LLL")["scores"])
    extras = list(rows["LLL"]["extras"])
    header = ["row", "schedule", "stack", "FLOPs vs LLL", *[f"{n} vs LLL" for n in names], *extras]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        cells = [name, row["schedule"], " ".join(row["stack"]) or "—", f"{row['flop_ratio']:.3f}"]
        cells += [_ci(row["scores"].get(n)) for n in names] + [_ci(row["extras"].get(e)) for e in extras]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _evaluations(entries: list[dict]) -> list[str]:
    lines = ["| point | FLOPs vs large-only | scores on the fit set |", "|---|---|---|"]
    lines += [f"| {e['label']} | {e['flop_ratio']:.3f} | {_scores(e['scores'])} |" for e in entries]
    return lines


def tune_markdown(result: TuneResult) -> str:
    chosen, cost, goal, space = result.chosen, result.cost, result.goal, result.space
    timing, held, fit = result.timing, result.held_out, result.fit
    stack = " ".join(chosen["stack"]) or "no stack"
    match = result.match["schedule"]
    lines = [
        "# Tuned FlowBlending stack",
        "",
        f"- command: `{result.command}`",
        f"- target: {result.target}",
        f"- space: step counts {list(space['step_counts'])} (solver {space['solver']} below the target's "
        f"own), FirstBlockCache thresholds {list(space['thresholds']) or 'none'}, small stage without "
        f"guidance tried: {space['small_distilled']}"
        + (f", adaptive switch thresholds of {space['adaptive']}" if space.get("adaptive") else ""),
        f"- goal: {_goal(goal)}; quality against the large-only, full-step, uncached output",
        f"- **chosen: `{chosen['schedule']}` + `{stack}`** — {chosen['message']}; worst-score loss "
        f"{chosen['loss_ratio_vs_match']:.2f}x that of {match} on the fit set",
        *[f"- note: {note}" for note in chosen.get("advice", [])],
        f"- as bench takes it: `{chosen['bench']}` (tuned.toml holds it for the config file)",
        f"- measured wall time vs large-only: tuned {_speed(timing.get('tuned'))}, {match} alone "
        f"{_speed(timing.get('FlowBlending alone'))}",
        *cost_lines({"run": result.run, "proxy": result.proxy}),
        "",
        f"Held-out validation ({len(held['prompts'])} prompts × {len(held['seeds'])} seeds never seen by the "
        f"search; fit set: {len(fit['prompts'])} prompts × {len(fit['seeds'])} seeds); every score against "
        "the large-only, full-step output of the same noise, 95 % intervals:",
        "",
        *_held_out(held["rows"]),
        "",
        _cost(cost),
    ]
    grid = result.grid
    if grid:
        pick = grid["pick"]
        found = f"`{pick['label']}` ({pick['flop_ratio']:.3f} of large-only FLOPs, {_scores(pick['scores'])})"
        lines += [
            "",
            f"Exhaustive grid ({grid['points']} points, {grid['extra_pipeline_calls']} more pipeline calls): "
            f"its pick is {found if pick else 'none'}; the search picked `{chosen['schedule']} "
            f"{' '.join(chosen['stack'])}`.",
        ]
    lines += ["", "Per step count: " + "; ".join(f"{k}: {v}" for k, v in result.per_step_count.items())]
    lines += [
        "",
        "Pareto frontier (FLOPs against every score, fit set):",
        "",
        *_evaluations(result.frontier),
    ]
    lines += ["", "![frontier](tune.png)", ""]
    return "\n".join(lines)


def _cost(cost: dict) -> str:
    return (
        f"Search cost: {cost['pipeline_calls']} pipeline calls ({cost['points_evaluated']} points, "
        f"{cost['points_rejected_early']} rejected on their first call; {cost['denoiser_calls_replayed']} "
        f"denoiser calls replayed from shared prefixes, {cost['denoiser_calls_computed']} computed) against "
        f"{cost['grid_pipeline_calls']} pipeline calls ({cost['grid_denoiser_calls']} denoiser calls) for "
        f"the grid of {cost['grid_points']} points"
        + (" — **stopped: the call budget was spent**" if cost["budget_spent"] else "")
        + "."
    )


def _goal(goal: dict) -> str:
    if goal["flop_budget"] is not None:
        return f"best quality within {goal['flop_budget']:.0%} of large-only FLOPs"
    if goal["latency_budget"] is not None:
        return f"best quality within {goal['latency_budget']:.0%} of large-only wall time (measured)"
    return "fewest FLOPs keeping " + ", ".join(f"{k} >= {v:.4f}" for k, v in goal["tolerance"].items())


def _speed(entry: dict | None) -> str:
    if not entry:
        return "—"
    s = entry["speedup"]
    return f"{s['median']:.2f}x [{s['q1']:.2f}, {s['q3']:.2f}]"


def tune_plot(result: TuneResult) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [e for e in result.evaluations if e["scores"]]
    names = list(scored[0]["scores"]) if scored else []
    figure, axes = plt.subplots(1, max(1, len(names)), figsize=(5.5 * max(1, len(names)), 4.2), squeeze=False)
    frontier = {e["label"] for e in result.frontier}
    for axis, name in zip(axes[0], names, strict=False):
        axis.scatter(
            [e["flop_ratio"] for e in scored],
            [e["scores"][name] for e in scored],
            s=10,
            c="lightgray",
            label="evaluated",
        )
        front = sorted((e for e in scored if e["label"] in frontier), key=lambda e: e["flop_ratio"])
        # Markers only: the frontier is joint over FLOPs and every score, so in one score's panel its points
        # are not monotone and a line through them would zigzag.
        axis.plot(
            [e["flop_ratio"] for e in front],
            [e["scores"][name] for e in front],
            "o",
            ms=5,
            label="frontier (FLOPs and every score)",
        )
        for label, entry in result.alone.items():
            if entry["scores"]:
                axis.scatter(entry["flop_ratio"], entry["scores"][name], marker="s", s=40, label=label)
        fit = result.chosen["fit"]
        if fit and fit["scores"]:
            axis.scatter(fit["flop_ratio"], fit["scores"][name], marker="*", s=160, c="red", label="tuned")
        wanted = (result.goal.get("tolerance") or {}).get(name)
        if wanted is not None:
            axis.axhline(wanted, color="red", lw=0.8, ls="--", label="tolerance")
        axis.set_xlabel("FLOPs vs large-only, full steps")
        axis.set_ylabel(f"{name} vs large-only (fit set)")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    stream = io.BytesIO()
    figure.savefig(stream, format="png", dpi=110)
    plt.close(figure)
    return stream.getvalue()
