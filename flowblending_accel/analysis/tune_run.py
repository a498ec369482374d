"""What ``tune`` runs on a workload once its request is checked: the search on the fit set, the points each
accelerator reaches alone, the optional exhaustive grid, the held-out validation and the timing.

The command line turns its options into a :class:`TuneRequest` and builds the workload; this module takes
those typed values (never the parsed command line) and returns the :class:`~.tune_report.TuneResult`.
Timing measures rows with the bench tool, which analysis does not import: the caller passes ``time_rows``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..core.schedule import PAPER_SCHEDULE, Schedule
from .call_runner import Job
from .scores import loss_ratio, passes, probing
from .tune import Evaluator, Point
from .tune_report import TuneResult
from .tune_search import (
    TuneSpace,
    adaptive_points,
    frontier,
    grid_points,
    search_budget,
    search_tolerance,
)
from .workload import Tolerance, Workload, WorkloadRequest, fit_and_seeds, proxy_verdict, resolve_tolerance

logger = logging.getLogger(__name__)

TIMING_ROWS = 4  # large-only, the hand-picked schedule, the tuned stack and the small-only probe
# ``time_rows([(label, schedule, stack), ...])``: the rows measured interleaved, as bench's table rows
# (``label``, ``speedup``, ``seconds``, ``recompiles_after_warmup``).
TimeRows = Callable[[list[tuple[str, Schedule, tuple]]], list[dict[str, Any]]]


@dataclass(frozen=True)
class TuneRequest:
    """What ``tune`` was asked, parsed once where the command line enters.

    ``workload``: what to score on; ``match``: the hand-picked schedule; one goal of ``tolerance`` (None: the
    match's fit scores), ``flop_budget`` and ``latency_budget`` (fractions of large-only); the space
    (``step_counts``, ``solver``, ``cache_thresholds``, ``small_distilled``, ``adaptive``: an adaptive window
    whose switch threshold is searched too); ``extra_stack``: members that
    leave the output as it is, written with the pick; ``compare``: hand-made points scored beside it;
    ``grid``: also run the exhaustive grid; ``repeats``: timing rounds. ``command_line``, ``tuned_target``
    (the target's identity and settings, for tuned.toml) and ``bench_command`` (the follow-up line) are
    recorded as given."""

    workload: WorkloadRequest
    match: str = PAPER_SCHEDULE
    tolerance: Tolerance | None = None
    flop_budget: float | None = None
    latency_budget: float | None = None
    step_counts: tuple[int, ...] | None = None
    solver: str | None = None
    cache_thresholds: tuple[float, ...] | None = None
    small_distilled: bool = False
    adaptive: Schedule | None = None
    extra_stack: tuple[str, ...] = ()
    compare: tuple[str, ...] = ()
    grid: bool = False
    repeats: int = 5
    command_line: str = ""
    tuned_target: Mapping[str, Any] = field(default_factory=dict)
    bench_command: str = ""

    def space(self, target: Any) -> TuneSpace:
        # Under context parallelism a FirstBlockCache would decide per rank, from each rank's own shard: none.
        split = self.workload.context_parallel > 1
        thresholds = [] if split else None if self.cache_thresholds is None else list(self.cache_thresholds)
        return TuneSpace.for_target(
            target,
            None if self.step_counts is None else list(self.step_counts),
            self.solver,
            thresholds,
            self.small_distilled,
            self.adaptive,
        )

    def plan_of(self, counts: Any, target: Any) -> Any:
        """The call plan of this request on ``target`` at the workload's sizes ``counts``."""
        from .cost import tune_plan

        timing = TIMING_ROWS * (self.repeats + 1) + 3  # + the FLOP passes of the baseline, probe, a cache
        space = self.space(target)
        grid = len(grid_points(space))
        adaptive = adaptive_points(space, counts) if self.adaptive is not None else 0
        plan = tune_plan(counts, grid, len(self.compare), TIMING_ROWS, self.repeats, self.grid, adaptive)
        if self.latency_budget is not None:  # every frontier point is timed too: at most every grid point
            plan = replace(plan, search=(plan.search[0], plan.search[1] + grid * timing))
        return plan

    def result_settings(self) -> dict[str, Any]:
        """The settings a journalled call's result or the pick depends on (a resumed run must match them):
        all but the workload's own, the command line and what is written with the pick."""
        written = ("workload", "command_line", "tuned_target", "bench_command")
        return {name: getattr(self, name) for name in self.__dataclass_fields__ if name not in written}

    def matched(self, steps: int) -> tuple[str, ...]:
        """The hand-picked schedule's model per step at ``steps`` steps."""
        return tuple(Schedule.parse(self.match).models_for_step_count(steps))


def tune(request: TuneRequest, work: Workload, time_rows: TimeRows, progress: Callable) -> TuneResult:
    """Search, validate on the held-out prompts and time the pick; ``progress`` counts pipeline calls. Every
    call is a job of the workload's runner (journalled; spread over the ranks under torchrun)."""
    target, space = work.target, request.space(work.target)
    full = space.full_steps
    runner = work.runner(progress, request.workload.max_minutes)
    evaluator = Evaluator(target, work.calls, work.scorers, full, runner=runner)
    matched = evaluator.evaluate(Point(request.matched(full)))
    result, goal = _search(request, work, evaluator, space, matched.scores)
    cost = _cost(evaluator, space, len(work.calls), result.budget_spent)  # the search's, before the rest
    chosen = result.chosen.point if result.chosen else Point(("large",) * full)
    alone = _alone_points(space, chosen, request.matched(full))
    alone.update({f"compared: {text}": Point.parse(text, full) for text in request.compare})
    evaluator.evaluate_all(list(alone.values()))
    grid = _grid(evaluator, space, request, goal, matched.scores) if request.grid else None
    timer = _journalled(time_rows, runner, request.repeats)
    timing = _timing(request, timer, request.matched(full), chosen)
    if request.latency_budget is not None:
        chosen, timing = _by_latency(request, timer, evaluator, matched.scores, (chosen, timing), full)
    rows = _held_out(work, full, alone, chosen, runner)
    evaluations = list(evaluator.evaluations.values())
    fitted = evaluator.evaluate(chosen).scores
    return TuneResult(
        command=request.command_line,
        target=target.description,
        tuned_target=dict(request.tuned_target),
        space={
            "step_counts": space.step_counts,
            "solver": space.solver,
            "thresholds": space.thresholds,
            "small_distilled": space.distilled,
            "adaptive": space.adaptive.adaptive_text() if space.adaptive is not None else None,
        },
        goal={
            "tolerance": goal,
            "flop_budget": request.flop_budget,
            "latency_budget": request.latency_budget,
        },
        proxy=proxy_verdict(
            work,
            None if request.tolerance is None else resolve_tolerance(request.tolerance, matched.scores),
            "tuned",
            fitted,
            matched.scores,
            _held_as_rows(rows),
        ),
        match={"schedule": request.match, "scores": matched.scores},
        chosen={
            **_point_dict(chosen, request.extra_stack),
            "bench": request.bench_command,
            "message": result.message,
            "fit": evaluator.evaluations.get(chosen).to_dict() if chosen in evaluator.evaluations else None,
            "loss_ratio_vs_match": loss_ratio(fitted, matched.scores),
        },
        per_step_count=result.per_step_count,
        cost=cost,
        run=runner.progress.report(),
        evaluations=[e.to_dict() for e in evaluations],
        frontier=[e.to_dict() for e in frontier(evaluations)],
        alone={name: evaluator.evaluations[p].to_dict() for name, p in alone.items()},
        grid=grid,
        held_out={**fit_and_seeds(work.held_out, work.holdout_seeds), "rows": rows},
        fit=fit_and_seeds(work.fit, work.seeds),
        timing=timing,
    )


def _search(request: TuneRequest, work: Workload, evaluator: Evaluator, space: TuneSpace, reference):
    """The joint search under the request's goal, within what --max-calls (per rank) leaves after the fixed
    parts."""
    max_calls = request.workload.max_calls
    evaluator.max_calls = max_calls and evaluator.pipeline_calls + work.plan.search_allowance(max_calls)
    goal = _goal(request.tolerance, reference)
    guidance, match = work.target.guidance_scale, request.matched
    if request.flop_budget is not None or request.latency_budget is not None:
        budget = request.flop_budget or request.latency_budget
        result = search_budget(evaluator, space, budget, reference, guidance, match)
    else:
        result = search_tolerance(evaluator, space, goal, guidance, match)
    evaluator.max_calls = None
    if result.budget_spent:  # said now, not only in the report at the end
        logger.warning(
            "tune: the search stopped: the call budget was spent (--max-calls %s); it picks the best point "
            "found so far, then validates and times it.",
            max_calls,
        )
    return result, goal


def _held_out(work: Workload, full: int, alone: dict[str, Point], chosen: Point, runner) -> dict[str, Any]:
    """The held-out table: large-only, each accelerator alone and compared point, and the pick."""
    target = work.target
    held = Evaluator(
        target, target.calls(work.held_out, work.holdout_seeds), work.scorers, full, runner=runner
    )
    return held.held_out({"LLL": Point(("large",) * full), **alone, "tuned": chosen})


def _held_as_rows(rows: dict[str, Any]) -> dict[str, Any]:
    """The held-out table under the names the proxy verdict reads: the pick and the hand-picked schedule."""
    return {"tuned": rows["tuned"], "match": rows["FlowBlending alone"]}


def _goal(tolerance: Tolerance | None, match_scores: dict[str, float]) -> dict[str, float]:
    goal = resolve_tolerance(tolerance, match_scores)
    return dict(goal) if isinstance(goal, dict) else dict.fromkeys(match_scores, goal)


def _alone_points(space: TuneSpace, chosen: Point, matched: tuple[str, ...]) -> dict[str, Point]:
    """FlowBlending alone (the hand-picked schedule, full steps), the step reduction alone and the cache alone
    (each at the tuned point's setting), for the frontier plot and the held-out table."""
    points = {"FlowBlending alone": Point(matched)}
    if chosen.steps != space.full_steps:
        points["step reduction alone"] = Point(("large",) * chosen.steps, chosen.solver)
    if chosen.cache:
        points["cache alone"] = Point(("large",) * space.full_steps, None, chosen.cache)
    return points


def _point_dict(point: Point, extra: tuple[str, ...]) -> dict[str, Any]:
    return {
        "schedule": point.schedule,
        "stack": [*point.stack, *extra],
        "small_guidance": point.small_guidance,
    }


def _cost(evaluator: Evaluator, space: TuneSpace, calls_per_point: int, spent: bool) -> dict[str, Any]:
    grid = grid_points(space)
    per_step = evaluator.reference_large_calls / space.full_steps
    return {
        "pipeline_calls": evaluator.pipeline_calls,
        # Summed over the calls' journalled counts: what was replayed depends on which calls one rank held
        # in memory before (how the calls were spread over ranks and runs); the outputs do not.
        "denoiser_calls_computed": evaluator.denoiser_calls["computed"],
        "denoiser_calls_replayed": evaluator.denoiser_calls["replayed"],
        "points_evaluated": len(evaluator.evaluations),
        "points_rejected_early": sum(e.rejected for e in evaluator.evaluations.values()),
        "grid_points": len(grid),
        "grid_pipeline_calls": len(grid) * calls_per_point,
        "grid_denoiser_calls": round(sum(p.steps for p in grid) * per_step * calls_per_point),
        "budget_spent": spent,
    }


def _grid(evaluator: Evaluator, space: TuneSpace, request: TuneRequest, goal, reference) -> dict[str, Any]:
    """Every point of the space, fully evaluated, and the grid's own pick by the same rule."""
    spent = evaluator.pipeline_calls
    evaluated = evaluator.evaluate_all(grid_points(space))
    scored = [e for e in evaluated if e.scores is not None]
    if request.flop_budget is not None:
        fitting = [e for e in scored if e.flop_ratio <= request.flop_budget + 1e-12]
        pick = min(fitting, key=lambda e: loss_ratio(e.scores, reference), default=None)
    else:
        pick = min((e for e in scored if passes(e.scores, goal)), key=lambda e: e.flop_ratio, default=None)
    return {
        "points": len(evaluated),
        "extra_pipeline_calls": evaluator.pipeline_calls - spent,
        "pick": pick.to_dict() if pick else None,
    }


def _journalled(time_rows: TimeRows, runner, repeats: int) -> TimeRows:
    """``time_rows`` as one job of the runner: every rank times the rows in lockstep (as bench does under
    torchrun) and rank 0's table is the one kept and journalled, so every rank decides from the same times
    and a resumed run reads them back instead of timing again."""

    def timed(rows: list[tuple[str, Schedule, tuple]]) -> list[dict[str, Any]]:
        written = [
            [label, schedule.as_written, [config.spec for config in stack]] for label, schedule, stack in rows
        ]
        job = Job({"pass": "timing", "rows": written, "repeats": repeats}, calls=len(rows) * (repeats + 1))
        kept = ("label", "speedup", "seconds", "recompiles_after_warmup")
        return runner.run_everywhere(job, lambda _job: [{k: row[k] for k in kept} for row in time_rows(rows)])

    return timed


def _timing(request: TuneRequest, time_rows: TimeRows, matched: tuple[str, ...], chosen: Point) -> dict:
    """Wall time of large-only, the hand-picked schedule and the tuned stack, interleaved in one process."""
    from ..accelerators import as_configs

    tuned_stack = tuple(as_configs((*chosen.stack, *request.extra_stack)))
    rows = [
        ("large only", Schedule.parse("L100"), ()),
        ("FlowBlending alone", Schedule.parse(Point(matched).schedule), ()),
        ("tuned", Schedule.parse(chosen.schedule), tuned_stack),
    ]
    with probing():  # the tuned schedule's advice (e.g. "ends small") is in the report, not in the log
        table = time_rows(rows)
    return {
        row["label"]: {
            "speedup": row["speedup"],
            "seconds": row["seconds"],
            "recompiles": row["recompiles_after_warmup"],
        }
        for row in table
    }


def _by_latency(request: TuneRequest, time_rows: TimeRows, evaluator: Evaluator, reference, fallback, full):
    """Under a latency budget: the best-quality frontier point whose measured time fits (else the FLOP-budget
    pick and its timing, said in the report)."""
    chosen, timing = fallback
    best, best_timing = None, timing
    for evaluation in frontier(list(evaluator.evaluations.values())):
        measured = _timing(request, time_rows, request.matched(full), evaluation.point)
        if 1 / measured["tuned"]["speedup"]["median"] <= request.latency_budget + 1e-12 and (
            best is None or loss_ratio(evaluation.scores, reference) < loss_ratio(best.scores, reference)
        ):
            best, best_timing = evaluation, measured
    return (best.point if best else chosen), best_timing
