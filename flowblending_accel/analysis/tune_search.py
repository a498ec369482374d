"""The joint search of :mod:`.tune`: per step count, the most small steps that still pass (bisection over
the divergence curve's placements, refined a step at a time), then the highest cache threshold that still
passes on those points; or, under a FLOP budget, the best quality that fits. Also the exhaustive grid over
the same space (to check the search against) and the Pareto frontier of everything evaluated."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from ..accelerators import RoutedModels, StepReduction
from ..accelerators.defaults import solver_for_family
from ..core.schedule import Schedule
from ..core.step_grid import scheduler_kind
from .adaptive_fit import threshold_passing, threshold_within
from .calibrate import shifted
from .scores import Scores, loss_ratio, passes
from .tune import BudgetSpent, Evaluation, Evaluator, Point

# The space tune searches when none is given: FirstBlockCache thresholds, and step counts as fractions of
# the target's own.
DEFAULT_THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.3)
STEP_FRACTIONS = (1.0, 0.7, 0.5, 0.4, 0.3, 0.25, 0.2)


@dataclass(frozen=True)
class TuneSpace:
    """What may change. ``step_counts`` descending, the first the target's own; ``solver`` runs the
    smaller counts (``None``: the target's own scheduler); ``thresholds`` ascending FirstBlockCache
    thresholds (empty: no cache); ``distilled``: also try the small stage without guidance; ``adaptive``:
    also the switch threshold of this adaptive schedule, at every step count where a fixed small stage
    passes."""

    step_counts: tuple[int, ...]
    solver: str | None
    thresholds: tuple[float, ...] = ()
    distilled: bool = False
    refine_rounds: int = 2
    adaptive: Schedule | None = None  # an adaptive window (L20:60-S-L20) whose threshold is a knob

    @classmethod
    def for_target(
        cls,
        target: Any,
        step_counts: list[int] | None = None,
        solver: str | None = None,
        thresholds: list[float] | None = None,
        distilled: bool = False,
        adaptive: Schedule | None = None,
    ) -> TuneSpace:
        """The space on ``target`` (a tools' Target): its own step count and the given or default smaller
        ones; the given solver, checked against the family, else the first the family takes; FirstBlockCache
        thresholds unless the denoiser is a UNet (it takes none)."""
        full = target.steps
        counts = step_counts or [max(2, round(full * fraction)) for fraction in STEP_FRACTIONS]
        models = RoutedModels.of(target.pipe, target.small)
        kind = target.family.solver_kind or scheduler_kind(target.pipe.scheduler)
        if solver:
            try:
                StepReduction(solver, 2).check_family(target.family, models.denoisers, kind)
            except ValueError as error:
                raise ValueError(f"--solver {solver}: {error}") from None
        else:
            solver = solver_for_family(target.family, models.denoisers, kind)
        unets = any(target.family.is_unet(denoiser) for denoiser in models.denoisers)
        chosen = () if unets else tuple(thresholds if thresholds is not None else DEFAULT_THRESHOLDS)
        steps = tuple(sorted({full, *counts}, reverse=True))
        return cls(steps, solver, chosen, distilled, adaptive=adaptive)

    @property
    def full_steps(self) -> int:
        return self.step_counts[0]

    def solver_for(self, steps: int) -> str | None:
        return None if steps == self.full_steps else self.solver


@dataclass
class SearchResult:
    chosen: Evaluation | None
    message: str
    budget_spent: bool = False
    per_step_count: dict[int, str] = field(default_factory=dict)


def _passing(evaluator: Evaluator, points: list[Point], tolerance: Scores) -> Evaluation | None:
    evaluated = [evaluator.evaluate(point, tolerance) for point in points]
    passing = [e for e in evaluated if e.scores is not None and passes(e.scores, tolerance)]
    return min(passing, key=lambda e: loss_ratio(e.scores, tolerance), default=None)


def _first_passing(evaluator: Evaluator, points: list[Point], tolerance: Scores) -> Evaluation | None:
    for point in points:
        evaluation = evaluator.evaluate(point, tolerance)
        if evaluation.scores is not None and passes(evaluation.scores, tolerance):
            return evaluation
    return None


def _one_stage(steps: int, k: int) -> list[tuple[str, ...]]:
    """Every placement of ``k`` contiguous small steps among ``steps`` (L-S-L, S-L, L-S)."""
    return [("large",) * s + ("small",) * k + ("large",) * (steps - s - k) for s in range(steps - k + 1)]


def _refined(evaluator: Evaluator, seed: Point, tolerance: Scores, rounds: int) -> Evaluation | None:
    """Move one small stage a step at a time from ``seed`` while that helps, until a placement passes."""
    current = evaluator.evaluate(seed, tolerance)
    for _ in range(rounds):
        neighbours = [replace(seed, models=tuple(models)) for models in shifted(list(current.point.models))]
        found = _passing(evaluator, neighbours, tolerance)
        if found is not None:
            return found
        scored = [evaluator.evaluations[p] for p in neighbours if evaluator.evaluations[p].screen]
        best = min(scored, key=lambda e: loss_ratio(e.screen, tolerance), default=None)
        if best is None or loss_ratio(best.screen, tolerance) >= loss_ratio(current.screen, tolerance):
            return None
        current, seed = best, best.point
    return None


def _most_small_steps(evaluator, space, steps, proposals, tolerance, match) -> Evaluation | None:
    """Bisection over the count of small steps at ``steps`` solver steps (0 small steps passes)."""
    solver = space.solver_for(steps)
    best = evaluator.evaluate(Point(("large",) * steps, solver), tolerance)
    low, high = 0, steps - 1
    while low < high:
        k = (low + high + 1) // 2
        points = [Point(models, solver) for models in proposals.get(k, [])]
        if match is not None and match.count("small") == k:
            points.insert(0, Point(match, solver))
        found = _passing(evaluator, points, tolerance)
        if found is None and points:
            found = _refined(evaluator, points[0], tolerance, space.refine_rounds)
        if found is None:  # the proxies missed: every one-stage placement, each screened on one call
            found = _first_passing(evaluator, [Point(m, solver) for m in _one_stage(steps, k)], tolerance)
        if found is not None:
            low, best = k, found
        else:
            high = k - 1
    # Quality is not always monotone in k (random weights, a late small stage): the proposals for more small
    # steps than the bisection settled on are screened too (one call each when they fail).
    for k in range(best.point.small_steps + 1, steps):
        points = [Point(models, solver) for models in proposals.get(k, [])]
        found = _passing(evaluator, points, tolerance)
        if found is not None:
            best = found
    return best


def search_tolerance(
    evaluator: Evaluator, space: TuneSpace, tolerance: Scores, guidance: float, match
) -> SearchResult:
    """The fewest FLOPs whose scores all reach ``tolerance``; ``match(steps)`` maps the hand-picked schedule
    to a step count."""
    feasible: list[Evaluation] = []
    result = SearchResult(None, "")
    try:
        for steps in space.step_counts:
            base = evaluator.evaluate(Point(("large",) * steps, space.solver_for(steps)), tolerance)
            if base.scores is None or not passes(base.scores, tolerance):
                result.per_step_count[steps] = "large-only fails: fewer steps are not tried"
                break
            proposals = evaluator.placements(steps, space.solver_for(steps), guidance)
            best = _most_small_steps(evaluator, space, steps, proposals, tolerance, match(steps))
            result.per_step_count[steps] = f"{best.point.small_steps} small steps pass"
            feasible.append(best)
            feasible += _with_cache(evaluator, space, best.point, tolerance)
            feasible += _cache_for_small_steps(evaluator, space, steps, proposals, feasible[-1], tolerance)
            if space.distilled and best.point.small_steps:
                unguided = evaluator.evaluate(replace(best.point, small_guidance="off"), tolerance)
                if unguided.scores is not None and passes(unguided.scores, tolerance):
                    feasible.append(unguided)
            if space.adaptive is not None and best.point.small_steps:
                feasible += _adaptive_passing(evaluator, space, steps, tolerance)
    except BudgetSpent:
        result.budget_spent = True
    passing = [e for e in feasible if e.scores is not None and passes(e.scores, tolerance)]
    result.chosen = min(passing, key=lambda e: e.flop_ratio, default=None)
    wanted = ", ".join(f"{name} >= {value:.4g}" for name, value in tolerance.items())
    result.message = (
        f"fewest FLOPs keeping {wanted}" if result.chosen else f"nothing but the baseline keeps {wanted}"
    )
    return result


def _adaptive_passing(evaluator: Evaluator, space: TuneSpace, steps: int, tolerance: Scores) -> list:
    """The adaptive window's highest passing threshold at ``steps`` (a settling pass, then a bisection)."""
    solver = space.solver_for(steps)
    settling = evaluator.settling(space.adaptive, steps, solver)

    def verify(threshold: float) -> Scores:
        point = Point.switching(space.adaptive.with_threshold(threshold), steps, solver)
        evaluation = evaluator.evaluate(point, tolerance)
        return evaluation.scores or evaluation.screen  # rejected early: its first call is clearly below

    found = threshold_passing(settling, verify, tolerance)
    if found is None:
        return []
    point = Point.switching(space.adaptive.with_threshold(found[0]), steps, solver)
    return [evaluator.evaluations[point]]


def _adaptive_within(evaluator: Evaluator, space: TuneSpace, steps: int, budget: float) -> list[Evaluation]:
    """The adaptive window's lowest threshold whose mean FLOPs fit ``budget`` at ``steps``."""
    solver = space.solver_for(steps)
    settling = evaluator.settling(space.adaptive, steps, solver)
    threshold = threshold_within(settling, budget, evaluator.per_call)
    if threshold is None:
        return []
    evaluation = evaluator.evaluate(Point.switching(space.adaptive.with_threshold(threshold), steps, solver))
    return [evaluation] if evaluation.flop_ratio <= budget + 1e-12 else []


def _with_cache(evaluator: Evaluator, space: TuneSpace, point: Point, tolerance: Scores) -> list[Evaluation]:
    """The point under each cache threshold, raised until one fails."""
    found = []
    for threshold in space.thresholds:
        evaluation = evaluator.evaluate(replace(point, cache=threshold), tolerance)
        if evaluation.scores is None or not passes(evaluation.scores, tolerance):
            break
        found.append(evaluation)
    return found


def _passing_at(evaluator, space, steps: int, k: int, proposals, tolerance) -> Evaluation | None:
    """A passing uncached placement of ``k`` small steps at ``steps``: one already evaluated, else the
    proposals for ``k``."""
    solver = space.solver_for(steps)
    known = [
        e
        for e in evaluator.evaluations.values()
        if e.point.steps == steps
        and e.point.solver == solver
        and e.point.cache is None
        and e.point.small_guidance == "on"
        and e.point.small_steps == k
        and e.scores is not None
        and passes(e.scores, tolerance)
    ]
    if known:
        return min(known, key=lambda e: loss_ratio(e.scores, tolerance))
    return _passing(evaluator, [Point(models, solver) for models in proposals.get(k, [])], tolerance)


def _cache_for_small_steps(evaluator, space, steps, proposals, record, tolerance) -> list[Evaluation]:
    """A cache can pay for fewer small steps: below the most that pass, each count's passing placement under
    the cache thresholds, down while that lowers the FLOPs (two counts in a row without a gain end it)."""
    if not space.thresholds:
        return []
    found, misses = [], 0
    for k in range(record.point.small_steps - 1, -1, -1):
        placement = _passing_at(evaluator, space, steps, k, proposals, tolerance)
        cached = _with_cache(evaluator, space, placement.point, tolerance) if placement else []
        found += cached
        lowest = min(cached, key=lambda e: e.flop_ratio, default=None)
        if lowest is not None and lowest.flop_ratio < record.flop_ratio:
            record, misses = lowest, 0
        else:
            misses += 1
            if misses == 2:
                break
    return found


def search_budget(
    evaluator: Evaluator, space: TuneSpace, budget: float, reference: Scores, guidance: float, match
) -> SearchResult:
    """The best quality (smallest worst-score loss relative to ``reference``) within ``budget`` of the
    large-only, full-step FLOPs."""
    fitting: list[Evaluation] = []
    result = SearchResult(None, "")
    per_call, full = evaluator.per_call, space.full_steps
    try:
        for steps in space.step_counts:
            solver = space.solver_for(steps)
            small_share = per_call["small"] / per_call["large"]
            k_min = next(
                (k for k in range(steps + 1) if (steps - k + k * small_share) / full <= budget + 1e-12), None
            )
            if k_min is None:
                result.per_step_count[steps] = "no placement fits"
                continue
            proposals = evaluator.placements(steps, solver, guidance) if k_min else {0: [("large",) * steps]}
            points = [Point(models, solver) for models in proposals.get(k_min, [])]
            if match(steps) is not None and match(steps).count("small") == k_min:
                points.append(Point(match(steps), solver))
            evaluated = [evaluator.evaluate(point) for point in points]
            fitting += [e for e in evaluated if e.flop_ratio <= budget + 1e-12]
            best = min(evaluated, key=lambda e: loss_ratio(e.scores, reference))
            for k in (k_min - 1, k_min - 2):  # a cache may pay for a small step less
                if k >= 0 and k in proposals:
                    fitting += _cached_within(evaluator, space, Point(proposals[k][0], solver), budget)
            if space.adaptive is not None and k_min:
                fitting += _adaptive_within(evaluator, space, steps, budget)
            result.per_step_count[steps] = f"{k_min} small steps fit uncached; best {best.point.label()}"
    except BudgetSpent:
        result.budget_spent = True
    scored = [e for e in fitting if e.scores is not None]
    result.chosen = min(scored, key=lambda e: loss_ratio(e.scores, reference), default=None)
    result.message = f"best quality within {budget:.0%} of large-only full-step FLOPs"
    return result


def _cached_within(evaluator: Evaluator, space: TuneSpace, point: Point, budget: float) -> list[Evaluation]:
    for threshold in space.thresholds:  # the lowest threshold that fits loses the least
        evaluation = evaluator.evaluate(replace(point, cache=threshold))
        if evaluation.flop_ratio <= budget + 1e-12:
            return [evaluation]
    return []


def adaptive_points(space: TuneSpace, counts: Any) -> int:
    """At most how many pipeline-call rounds the adaptive threshold costs (``counts``: the workload's
    sizes): per step count a settling pass and a bisection over one threshold per fit sample and step."""
    samples = counts.fit_prompts * counts.seeds
    return sum(1 + math.ceil(math.log2(steps * samples + 1)) + 1 for steps in space.step_counts)


def grid_points(space: TuneSpace) -> list[Point]:
    """Every point of the space with at most one small stage (L-S-L, L-S, S-L, all-large)."""
    points = []
    for steps in space.step_counts:
        placements = [("large",) * steps] + [m for k in range(1, steps) for m in _one_stage(steps, k)]
        for models in placements:
            for cache in (None, *space.thresholds):
                points.append(Point(models, space.solver_for(steps), cache))
    return points


def frontier(evaluations: list[Evaluation]) -> list[Evaluation]:
    """The evaluated points no other point beats on FLOPs and every score at once. Of points that tie on
    all of them (a cache threshold too tight to skip anything) the one with the shorter stack stays."""
    scored = [e for e in evaluations if e.scores is not None]

    def dominates(a: Evaluation, b: Evaluation) -> bool:
        no_worse = a.flop_ratio <= b.flop_ratio and all(a.scores[n] >= b.scores[n] for n in b.scores)
        better = a.flop_ratio < b.flop_ratio or any(a.scores[n] > b.scores[n] for n in b.scores)
        simpler = len(a.point.stack) < len(b.point.stack)
        return no_worse and (better or simpler)

    return sorted(
        (e for e in scored if not any(dominates(o, e) for o in scored if o is not e)),
        key=lambda e: e.flop_ratio,
    )
