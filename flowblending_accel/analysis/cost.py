"""What analyze, calibrate and tune will cost before they start, and a watch that holds them to a budget.

A *plan* counts the full pipeline calls of each part of a command (fixed parts exactly; an adaptive search
by the most it can make), so a user of a real pair knows the bill before paying it: on Wan 2.1 14B at 50
steps one call is minutes of a GPU. ``--max-calls`` refuses a plan whose most exceeds it before any call,
naming a smaller plan that fits; ``--max-minutes`` is checked from the first call's time (the only honest
clock), and the run stops there when the rest would not fit.

Under torchrun the calls are shared by the data-parallel ranks (every rank makes the FLOP count and tune's
timing rounds itself): the plan says how many ranks share it and the most one rank makes, ``--max-calls``
holds each rank, and the wall time is estimated for one rank's share.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

logger = logging.getLogger(__name__)


class BudgetError(ValueError):
    """A plan that does not fit the budget the user gave: one line, exit 2."""


@dataclass(frozen=True)
class WorkloadSizes:
    """The sizes a plan is counted from (and what ``--fit-prompts`` / ``--seeds`` ... would change)."""

    prompts: int  # all of them: the fit set and, when some are held out, the rest
    fit_prompts: int
    seeds: int
    holdout_seeds: int
    steps: int
    window: int = 0  # analyze --windows, calibrate --sensitivity-window
    holding: bool = True  # the prompts not fitted on are held out (calibrate, tune; not analyze)
    batch: int | None = 1  # prompts per pipeline call (None: all of a seed's prompts in one call)

    def _calls(self, prompts: int, seeds: int) -> int:
        per_seed = 1 if self.batch is None else math.ceil(prompts / self.batch)
        return per_seed * seeds if prompts else 0

    @property
    def fit_calls(self) -> int:
        return self._calls(self.fit_prompts, self.seeds)

    @property
    def held_calls(self) -> int:
        return self._calls(self.prompts - self.fit_prompts, self.holdout_seeds) if self.holding else 0


EVERY_RANK = ("FLOP count", "timing")  # parts every rank makes itself under torchrun


@dataclass(frozen=True)
class CallPlan:
    command: str
    parts: tuple[tuple[str, int], ...]  # (what, pipeline calls), made whatever happens
    search: tuple[str, int] | None = None  # (what, at most): an adaptive search stops earlier
    stoppable: int | None = None  # the search stops at a call budget, after at least this many calls
    ranks: int = 1  # the data-parallel ranks that share the calls

    @property
    def every_rank(self) -> int:
        """The calls each rank makes itself (not shared)."""
        return sum(calls for what, calls in self.parts if what in EVERY_RANK)

    def per_rank(self, calls: int) -> int:
        """The most one rank makes of ``calls`` of this plan: its own parts and its share of the rest."""
        return self.every_rank + math.ceil((calls - self.every_rank) / self.ranks)

    @property
    def at_most_per_rank(self) -> int:
        return self.per_rank(self.at_most)

    @property
    def least_per_rank(self) -> int:
        return self.per_rank(self.least)

    def search_allowance(self, max_calls: int) -> int:
        """The search's calls, all ranks together, that ``max_calls`` per rank leaves after the fixed
        parts."""
        return self.ranks * (max_calls - self.every_rank) - (self.fixed - self.every_rank)

    @property
    def fixed(self) -> int:
        return sum(calls for _, calls in self.parts)

    @property
    def at_most(self) -> int:
        return self.fixed + (self.search[1] if self.search else 0)

    @property
    def least(self) -> int:
        """The fewest calls it can be held to: a search that stops at a budget needs only its first few."""
        return self.fixed + (self.stoppable if self.stoppable is not None else self.at_most - self.fixed)

    def describe(self) -> str:
        parts = ", ".join(f"{what} {calls}" for what, calls in self.parts)
        search = f"; {self.search[0]}: at most {self.search[1]}" if self.search else ""
        total = f"at most {self.at_most}" if self.search else str(self.at_most)
        shared = (
            f"; {self.ranks} ranks share them: {'at most ' if self.search else ''}"
            f"{self.at_most_per_rank} per rank"
            if self.ranks > 1
            else ""
        )
        return f"{self.command} will make {total} pipeline calls ({parts}{search}){shared}"


def analyze_plan(work: WorkloadSizes) -> CallPlan:
    parts = [("FLOP count", 1), ("divergence pass", work.fit_calls)]
    if work.window:
        windows = math.ceil(work.steps / work.window)
        parts.append((f"window evidence ({work.window} steps)", work.fit_calls * windows))
    return CallPlan("analyze", tuple(parts))


def calibrate_plan(work: WorkloadSizes, measures: int, budget_goal: bool, adaptive: bool = False) -> CallPlan:
    """The divergence pass, the sensitivity windows, the hand-picked schedule, the held-out comparison
    (large-only, the hand-picked and the calibrated schedule) are fixed; the search verifies candidates: a
    budget goal the proposals (one per measure) of 3 step counts, a tolerance goal a bisection over the
    small-step count, each round its proposals and up to 3 refinement rounds of 4 neighbours. An adaptive
    schedule's threshold (``adaptive``) costs a settling pass, then one verification under a budget or a
    bisection over at most one threshold per fit sample and step."""
    proposals = measures + (1 if work.window else 0)
    parts = [("FLOP count", 1), ("divergence pass", work.fit_calls)]
    if work.window:
        windows = math.ceil(work.steps / work.window)
        parts.append((f"sensitivity ({work.window} steps)", work.fit_calls * windows))
    if adaptive:
        parts.append(("settling pass", work.fit_calls))
    parts += [("hand-picked schedule", work.fit_calls), ("held-out comparison", 3 * work.held_calls)]
    rounds = math.ceil(math.log2(max(work.steps, 2)))
    candidates = 3 * proposals if budget_goal else rounds * (proposals + 12)
    if adaptive:
        thresholds = work.steps * work.fit_prompts * work.seeds + 1
        candidates = 1 if budget_goal else math.ceil(math.log2(thresholds)) + 1
    return CallPlan("calibrate", tuple(parts), ("candidate verification", candidates * work.fit_calls))


def tune_plan(
    work: WorkloadSizes,
    grid_points: int,
    compared: int,
    timing_rows: int,
    repeats: int,
    grid: bool,
    adaptive_rounds: int = 0,
) -> CallPlan:
    """The reference and the hand-picked point, each accelerator alone (at most 3) and the compared stacks,
    the timing rounds and the held-out table are fixed; the search visits at most every grid point once,
    and an adaptive threshold adds at most ``adaptive_rounds`` passes over the fit calls."""
    parts = [
        ("FLOP count", 1),
        ("reference and hand-picked", 2 * work.fit_calls),
        ("each accelerator alone and compared", (3 + compared) * work.fit_calls),
        ("timing", timing_rows * (repeats + 1)),
        ("held-out table", (5 + compared) * work.held_calls),
    ]
    if grid:
        parts.append(("exhaustive grid", grid_points * work.fit_calls))
    # The search stops at --max-calls (what the fixed parts leave it), after one point at least.
    search = (grid_points + adaptive_rounds) * work.fit_calls
    return CallPlan("tune", tuple(parts), ("search", search), stoppable=work.fit_calls)


# Smaller plans, closest to what was asked first: the flag a user changes, and the work it leaves.
SMALLER = (
    ("--seeds", "1", lambda w: replace(w, seeds=1)),
    ("--holdout-seeds", "1", lambda w: replace(w, holdout_seeds=1)),
    ("--sensitivity-window", "0", lambda w: replace(w, window=0)),
    ("--fit-prompts", "4", lambda w: replace(w, fit_prompts=min(w.fit_prompts, 4))),
    ("--fit-prompts", "2", lambda w: replace(w, fit_prompts=min(w.fit_prompts, 2))),
    ("--fit-prompts", "1", lambda w: replace(w, fit_prompts=1)),
)


def smaller_plan(
    work: WorkloadSizes, plan_of: Callable[[WorkloadSizes], CallPlan], calls: int
) -> tuple[str, CallPlan]:
    """The first plan (its flags, the plan) of ever smaller ones that makes at most ``calls`` calls, else
    the smallest one (the caller says it does not fit either)."""
    flags: dict[str, str] = {}
    current, best = work, ("", plan_of(work))
    for flag, value, shrink in SMALLER:
        reduced = shrink(current)
        if plan_of(reduced).least_per_rank >= best[1].least_per_rank:
            continue  # e.g. fewer fit prompts when they share one batched call
        flags[flag], current = value, reduced
        best = (" ".join(f"{name} {setting}" for name, setting in flags.items()), plan_of(current))
        if best[1].least_per_rank <= calls:
            return best
    return best


def check_calls(
    work: WorkloadSizes, plan_of: Callable[[WorkloadSizes], CallPlan], max_calls: int | None
) -> CallPlan:
    """The plan; refused before any call when its most exceeds ``max_calls`` (per rank), naming what fits."""
    plan = plan_of(work)
    if max_calls is None or plan.least_per_rank <= max_calls:
        return plan
    flags, smaller = smaller_plan(work, plan_of, max_calls)
    most = smaller.at_most_per_rank
    needs = f"needs at least {smaller.least_per_rank}" if smaller.stoppable is not None else f"makes {most}"
    needs += " per rank" if plan.ranks > 1 else ""
    if smaller.least_per_rank <= max_calls:
        advice = f"with {flags} it {needs}, which fits"
    else:
        advice = f"even the smallest plan ({flags}) {needs}: raise --max-calls"
    per_rank = " per rank" if plan.ranks > 1 else ""
    least = f" (it needs at least {plan.least_per_rank}{per_rank})" if plan.stoppable is not None else ""
    raise BudgetError(
        f"--max-calls {max_calls}: {plan.describe()}{least}; {advice} (or fit at a --proxy-size)."
    )


class CostWatch:
    """Wraps a progress callback: after the first pipeline call this rank makes it logs the estimated wall
    time of its share of the plan, and stops the run when ``max_minutes`` cannot hold it. Calls it did not
    make (journalled before, or another rank's) advance the count through :meth:`skip`, untimed."""

    def __init__(self, plan: CallPlan, advance: Callable, max_minutes: float | None = None, threads=None):
        self.plan, self.advance, self.max_minutes, self.threads = plan, advance, max_minutes, threads
        self.start, self.done, self.estimate = time.monotonic(), 0, None
        self.clock = self.start  # when this rank's first call started

    def skip(self, amount: float) -> None:
        self.advance(amount)
        if self.done == 0:
            self.clock = time.monotonic()

    def __call__(self, amount: float = 1) -> None:
        self.advance(amount)
        self.done += amount
        if self.estimate is None and self.done >= 1:
            per_call = (time.monotonic() - self.clock) / self.done
            self.estimate = per_call * self.plan.at_most_per_rank
            fixed = (
                ""
                if not self.plan.search
                else f", the fixed parts alone {_minutes(per_call * self.plan.per_rank(self.plan.fixed))}"
            )
            logger.info(
                "estimated wall time: at most %s (%d calls%s at the first one's %.2f s%s)",
                _minutes(self.estimate),
                self.plan.at_most_per_rank,
                " per rank" if self.plan.ranks > 1 else "",
                per_call,
                fixed,
            )
            if self.max_minutes is not None and self.estimate > 60 * self.max_minutes:
                fitting = int(60 * self.max_minutes / per_call)
                raise BudgetError(
                    f"--max-minutes {self.max_minutes:g}: {self.plan.describe()}, about "
                    f"{_minutes(self.estimate)} at the first call's {per_call:.2f} s; about {fitting} calls "
                    f"{'per rank ' if self.plan.ranks > 1 else ''}fit (--max-calls {fitting} names the "
                    "flags of "
                    "a plan that small; or --proxy-size)."
                )

    def report(self) -> dict[str, Any]:
        return {
            "planned_at_most": self.plan.at_most,
            "ranks": self.plan.ranks,
            "plan": self.plan.describe(),
            "estimated_seconds": self.estimate,
            "seconds": time.monotonic() - self.start,
            "threads": self.threads.describe() if self.threads is not None else None,
        }


def _minutes(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
