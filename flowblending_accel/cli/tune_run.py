"""What ``flowblending-accel tune`` runs once its options are checked: the search on the fit set, the points
each accelerator reaches alone, the optional exhaustive grid, the held-out validation and the timing."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import replace
from typing import Any

from .workload import explicit_tolerance, prepare_workload, tolerance_from

TIMING_ROWS = 4  # large-only, the hand-picked schedule, the tuned stack and the small-only probe


def _check_goal(args, names: list[str]) -> None:
    if args.tolerance is not None:
        tolerance_from(args.tolerance, dict.fromkeys([n for n in names if not n.startswith("fd:")], 0.0))


def _space(args, target):
    from ..analysis.tune_search import TuneSpace

    return TuneSpace.for_target(
        target, args.step_counts, args.solver, args.cache_thresholds, args.small_distilled
    )


def run(args: argparse.Namespace) -> int:
    from ..analysis.cost import tune_plan
    from ..analysis.scores import loss_ratio
    from ..analysis.tune import Evaluator, Point
    from ..analysis.tune_report import TuneResult, tune_markdown, tune_plot, tuned_toml
    from ..analysis.tune_search import frontier, grid_points, search_budget, search_tolerance
    from ..analysis.workload import fit_and_seeds, proxy_verdict
    from ..core.schedule import Schedule
    from ..support.files import write_atomic
    from ..support.progress import progress

    def plan_of(counts, target):
        timing = TIMING_ROWS * (args.repeats + 1) + 3  # + the FLOP passes of the baseline, probe, a cache
        grid = len(grid_points(_space(args, target)))
        plan = tune_plan(counts, grid, len(args.compare), TIMING_ROWS, args.repeats, args.grid)
        if args.latency_budget is not None:  # every frontier point is timed too: at most every grid point
            plan = replace(plan, search=(plan.search[0], plan.search[1] + grid * timing))
        return plan

    work = prepare_workload(args, holding=True, check_goal=_check_goal, plan_of=plan_of)
    target = work.target
    space = _space(args, target)
    full = space.full_steps

    def match(steps: int) -> tuple[str, ...]:
        return tuple(Schedule.parse(args.match).models_for_step_count(steps))

    with progress("tuning (pipeline calls)", work.plan.at_most) as bar:
        advance = work.watch(bar, getattr(args, "max_minutes", None))
        evaluator = Evaluator(target, work.calls, work.scorers, full, progress=advance)
        matched = evaluator.evaluate(Point(match(full)))
        # --max-calls holds the whole run: the search gets what the fixed parts leave.
        evaluator.max_calls = args.max_calls and evaluator.pipeline_calls + args.max_calls - work.plan.fixed
        goal = _goal(args, matched.scores)
        if args.flop_budget is not None or args.latency_budget is not None:
            budget = args.flop_budget or args.latency_budget
            result = search_budget(evaluator, space, budget, matched.scores, target.guidance_scale, match)
        else:
            result = search_tolerance(evaluator, space, goal, target.guidance_scale, match)
        evaluator.max_calls = None
        if result.budget_spent:  # said now, not only in the report at the end
            print(
                f"tune: the search stopped: the call budget was spent (--max-calls {args.max_calls}); it "
                "picks the best point found so far, then validates and times it.",
                file=sys.stderr,
                flush=True,
            )
        cost = _cost(evaluator, space, len(work.calls), result.budget_spent)  # the search's, before the rest
        chosen = result.chosen.point if result.chosen else Point(("large",) * full)
        alone = _alone_points(space, chosen, match(full))
        alone.update({f"compared: {text}": Point.parse(text, full) for text in args.compare})
        for point in alone.values():
            evaluator.evaluate(point)
        grid = _grid(evaluator, space, args, goal, matched.scores) if args.grid else None
        timing = _timing(target, args, match(full), chosen)
        if args.latency_budget is not None:
            chosen, timing = _by_latency(
                target, args, evaluator, matched.scores, (chosen, timing), match(full)
            )
        held = Evaluator(
            target, target.calls(work.held_out, work.holdout_seeds), work.scorers, full, progress=advance
        )
        prompts = [p.text for _ in work.holdout_seeds for p in work.held_out]
        rows = {"LLL": held.held_out(Point(("large",) * full), prompts)}
        rows.update(
            {name: held.held_out(point, prompts) for name, point in {**alone, "tuned": chosen}.items()}
        )
    evaluations = list(evaluator.evaluations.values())
    tuned = TuneResult(
        command=args.command_line,
        target=target.description,
        tuned_target=_tuned_target(args),
        space={
            "step_counts": space.step_counts,
            "solver": space.solver,
            "thresholds": space.thresholds,
            "small_distilled": space.distilled,
        },
        goal={"tolerance": goal, "flop_budget": args.flop_budget, "latency_budget": args.latency_budget},
        proxy=proxy_verdict(
            work,
            explicit_tolerance(args, matched.scores),
            "tuned",
            evaluator.evaluate(chosen).scores,
            matched.scores,
            _held_as_rows(rows),
        ),
        match={"schedule": args.match, "scores": matched.scores},
        chosen={
            **_point_dict(chosen, args.extra_stack),
            "bench": f"flowblending-accel bench --config {shlex.quote(str(args.output / 'tuned.toml'))}",
            "message": result.message,
            "fit": evaluator.evaluations.get(chosen).to_dict() if chosen in evaluator.evaluations else None,
            "loss_ratio_vs_match": loss_ratio(evaluator.evaluate(chosen).scores, matched.scores),
        },
        per_step_count=result.per_step_count,
        cost=cost,
        run=advance.report(),
        evaluations=[e.to_dict() for e in evaluations],
        frontier=[e.to_dict() for e in frontier(evaluations)],
        alone={name: evaluator.evaluations[p].to_dict() for name, p in alone.items()},
        grid=grid,
        held_out={**fit_and_seeds(work.held_out, work.holdout_seeds), "rows": rows},
        fit=fit_and_seeds(work.fit, work.seeds),
        timing=timing,
    )
    write_atomic(
        args.output / "tune.json", (json.dumps(tuned.to_dict(), indent=2, default=str) + "\n").encode()
    )
    write_atomic(args.output / "tuned.toml", tuned_toml(tuned).encode())
    write_atomic(args.output / "tune.md", tune_markdown(tuned).encode())
    write_atomic(args.output / "tune.png", tune_plot(tuned))
    print((args.output / "tune.md").read_text())
    return 0


TUNED_SETTINGS = ("target", "large", "small", "pair", "prompts", "height", "width", "frames", "steps")


def _tuned_target(args) -> dict[str, Any]:
    """The target tune ran on: its identity, and the settings that rebuild it (local paths relative to the
    output folder, where tuned.toml is written, so the folders can move together)."""
    import os
    from pathlib import Path

    from ..targets.options import IDENTITY_SETTINGS
    from .targeting import target_settings

    options, _ = target_settings(args)
    settings = {}
    for name in TUNED_SETTINGS:
        value = getattr(options, name)
        if value is None or (name == "target" and value == "embedded" and options.large is not None):
            continue
        local = isinstance(value, str) and Path(value).exists()
        settings[name] = os.path.relpath(Path(value).resolve(), args.output.resolve()) if local else value
    named = {name: settings[name] for name in IDENTITY_SETTINGS if name in settings}
    return {"identity": options.identity(), "for": named, "settings": settings}


def _held_as_rows(rows: dict[str, Any]) -> dict[str, Any]:
    """The held-out table under the names the proxy verdict reads: the pick and the hand-picked schedule."""
    return {"tuned": rows["tuned"], "match": rows["FlowBlending alone"]}


def _goal(args, match_scores: dict[str, float]) -> dict[str, float]:
    if args.tolerance is None:
        return dict(match_scores)
    tolerance = tolerance_from(args.tolerance, match_scores)
    return tolerance if isinstance(tolerance, dict) else dict.fromkeys(match_scores, tolerance)


def _alone_points(space, chosen, matched) -> dict[str, Any]:
    """FlowBlending alone (the hand-picked schedule, full steps), the step reduction alone and the cache alone
    (each at the tuned point's setting), for the frontier plot and the held-out table."""
    from ..analysis.tune import Point

    points = {"FlowBlending alone": Point(matched)}
    if chosen.steps != space.full_steps:
        points["step reduction alone"] = Point(("large",) * chosen.steps, chosen.solver)
    if chosen.cache:
        points["cache alone"] = Point(("large",) * space.full_steps, None, chosen.cache)
    return points


def _point_dict(point, extra) -> dict[str, Any]:
    stack = [*point.stack, *extra]
    return {
        "schedule": point.schedule,
        "stack": stack,
        "small_guidance": point.small_guidance,
    }


def _cost(evaluator, space, calls_per_point: int, spent: bool) -> dict[str, Any]:
    from ..analysis.tune_search import grid_points

    grid = grid_points(space)
    per_step = evaluator.reference_large_calls / space.full_steps
    return {
        "pipeline_calls": evaluator.pipeline_calls,
        "denoiser_calls_computed": evaluator.replay.computed,
        "denoiser_calls_replayed": evaluator.replay.replayed,
        "points_evaluated": len(evaluator.evaluations),
        "points_rejected_early": sum(e.rejected for e in evaluator.evaluations.values()),
        "grid_points": len(grid),
        "grid_pipeline_calls": len(grid) * calls_per_point,
        "grid_denoiser_calls": round(sum(p.steps for p in grid) * per_step * calls_per_point),
        "budget_spent": spent,
    }


def _grid(evaluator, space, args, goal, reference) -> dict[str, Any]:
    """Every point of the space, fully evaluated, and the grid's own pick by the same rule."""
    from ..analysis.scores import loss_ratio, passes
    from ..analysis.tune_search import grid_points

    spent = evaluator.pipeline_calls
    evaluated = [evaluator.evaluate(point) for point in grid_points(space)]
    scored = [e for e in evaluated if e.scores is not None]
    if args.flop_budget is not None:
        fitting = [e for e in scored if e.flop_ratio <= args.flop_budget + 1e-12]
        pick = min(fitting, key=lambda e: loss_ratio(e.scores, reference), default=None)
    else:
        pick = min((e for e in scored if passes(e.scores, goal)), key=lambda e: e.flop_ratio, default=None)
    return {
        "points": len(evaluated),
        "extra_pipeline_calls": evaluator.pipeline_calls - spent,
        "pick": pick.to_dict() if pick else None,
    }


def _timing(target, args, matched, chosen) -> dict[str, Any]:
    """Wall time of large-only, the hand-picked schedule and the tuned stack, interleaved in one process."""
    from ..accelerators import as_configs
    from ..analysis.scores import probing
    from ..analysis.tune import Point
    from ..bench.runner import LARGE_ONLY, Row, measure_rows, summarise
    from ..core.schedule import Schedule

    tuned_stack = tuple(as_configs((*chosen.stack, *args.extra_stack)))
    rows = [
        Row("large only", LARGE_ONLY),
        Row("FlowBlending alone", Schedule.parse(Point(matched).schedule)),
        Row("tuned", Schedule.parse(chosen.schedule), tuned_stack),
    ]
    with probing():  # the tuned schedule's advice (e.g. "ends small") is in the report, not in the log
        measured = measure_rows(target, rows, args.repeats, count_flops="derived")
    table = summarise(measured, lambda *_: None)
    return {
        row["label"]: {
            "speedup": row["speedup"],
            "seconds": row["seconds"],
            "recompiles": row["recompiles_after_warmup"],
        }
        for row in table
    }


def _by_latency(target, args, evaluator, reference, fallback, matched):
    """Under --latency-budget: the best-quality frontier point whose measured time fits (else the FLOP-budget
    pick and its timing, said in the report)."""
    from ..analysis.scores import loss_ratio
    from ..analysis.tune_search import frontier

    chosen, timing = fallback
    best, best_timing = None, timing
    for evaluation in frontier(list(evaluator.evaluations.values())):
        measured = _timing(target, args, matched, evaluation.point)
        if 1 / measured["tuned"]["speedup"]["median"] <= args.latency_budget + 1e-12 and (
            best is None or loss_ratio(evaluation.scores, reference) < loss_ratio(best.scores, reference)
        ):
            best, best_timing = evaluation, measured
    return (best.point if best else chosen), best_timing
