"""A workload: the fit and held-out prompts and seeds a command scores schedules on, with its scorers and its
call plan, and the verdict on a pick fitted at a smaller (proxy) size. analyze, calibrate and tune run on it.

The command line parses its options into a :class:`WorkloadRequest` and resolves the target; here the
request is checked before the target is built (:func:`check_request`), and the workload made on the built
target (:meth:`Workload.prepare`): the fit / held-out split, the scorers, the call plan (refused against
``max_calls``, said before the first call) and the FLOPs of one call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..metrics.scorers import SetScorer, is_set_scorer
from .call_runner import CallRunner
from .cost import CostWatch, WorkloadSizes, check_calls
from .scores import loss_ratio, passes

if TYPE_CHECKING:
    from ..core.families import Family

logger = logging.getLogger(__name__)

# A tolerance: one minimum for every score, or a minimum per scorer (``--tolerance ssim=0.6``).
Tolerance = float | dict[str, float]


@dataclass(frozen=True)
class WorkloadRequest:
    """What a scoring command asked for, parsed once where the command line enters.

    ``output``: the results folder; ``scorers``: scorer names, checked against the built-in ones and
    ``offered_scorers`` (the target's own, e.g. the embedded pair's classifier); ``seeds`` per fit prompt and
    ``holdout_seeds`` per held-out prompt; ``fit_prompts``: how many prompts to fit on (None: the default
    split); ``holding``: the prompts not fitted on are held out (calibrate, tune) or, unless ``fit_prompts``
    picks some, all are fitted on (analyze); ``proxy``: the call arguments of a smaller fit size;
    ``windows``: analyze's evidence window and ``sensitivity_window`` calibrate's (0: none);
    ``max_calls`` and ``max_minutes``: the budgets; ``threads``: torch threads (None: automatic);
    ``context_parallel``: the ranks that split each call under torchrun (1: none; calls shard across the
    groups of that many ranks)."""

    output: Path
    scorers: tuple[str, ...]
    seeds: int = 2
    holdout_seeds: int = 4
    fit_prompts: int | None = None
    holding: bool = True
    proxy: Mapping[str, int] | None = None
    windows: int = 0
    sensitivity_window: int = 0
    max_calls: int | None = None
    max_minutes: float | None = None
    threads: int | None = None
    offered_scorers: tuple[str, ...] = ()
    context_parallel: int = 1

    @property
    def holdout_seed_values(self) -> list[int]:
        return [100 + s for s in range(self.holdout_seeds)]

    @property
    def window(self) -> int:
        """The window the call plan counts (analyze's evidence window, else calibrate's sensitivity one)."""
        return self.windows or self.sensitivity_window


def check_request(
    request: WorkloadRequest,
    prompts: list | None,
    family: Family | None,
    steps: int | None,
    tolerance: Tolerance | None = None,
) -> None:
    """Refuse what can be refused before the target is built: an unknown scorer, a video scorer on images,
    a tolerance naming no scorer, a prompts file too short to hold prompts out, a window longer than the
    run. ``prompts``, ``family`` and ``steps``: what the target's options already say (None: unknown until
    it is built)."""
    from ..metrics.scorers import check_scorer_names

    names = list(request.scorers)
    check_scorer_names(names, dict.fromkeys(request.offered_scorers))
    if "temporal" in names and family is not None and family.output_field == "images":
        raise ValueError(f"scorer temporal: the {family.name} pipeline makes images; it needs videos.")
    if tolerance is not None:
        check_tolerance(tolerance, [name for name in names if not name.startswith("fd:")])
    if prompts is not None:
        fit_and_held_out(prompts, request.fit_prompts, names, request.holdout_seed_values, request.holding)
    check_windows(request.windows, steps)


def check_windows(windows: int, steps: int | None) -> None:
    """analyze's evidence window must fit in the run's ``steps`` (when known)."""
    if steps is not None and windows > steps:
        raise ValueError(f"--windows {windows} is longer than the run's {steps} steps; use at most that.")


def check_tolerance(tolerance: Tolerance, names: list[str]) -> None:
    """Refuse a per-scorer tolerance naming a score the workload does not compute."""
    unknown = sorted(set(tolerance) - set(names)) if isinstance(tolerance, dict) else []
    if unknown:
        raise ValueError(
            f"--tolerance: unknown score {', '.join(unknown)}; scores here are {', '.join(names)}."
        )


def resolve_tolerance(tolerance: Tolerance | None, reference: dict[str, float]) -> Tolerance:
    """The minimum scores to keep: ``tolerance`` as given, or the ``reference`` scores when none was."""
    if tolerance is None:
        return reference
    check_tolerance(tolerance, list(reference))
    return tolerance


@dataclass
class Workload:
    target: Any
    fit: list
    held_out: list
    seeds: list[int]
    holdout_seeds: list[int]
    scorers: list
    set_scorers: list
    flops: dict[str, int]
    proxy: dict[str, int] | None = None  # the fit set's size (--proxy-size); held-out calls run full size
    plan: Any = None  # the CallPlan, checked against --max-calls
    threads: Any = None  # the command's ThreadGovernor
    journal: Any = None  # the run's CallJournal (None: in memory, nothing to resume)
    coordinator: Any = None  # the ranks of the run (None: one process)
    stop: Any = None  # SIGTERM's StopRequest while the command runs
    group_size: int = 1  # ranks that split one call (context parallel)

    @classmethod
    def prepare(
        cls,
        request: WorkloadRequest,
        target: Any,
        plan_of: Callable[[Any, Any], Any],
        threads: Any = None,
        ranks: int = 1,
    ) -> Workload:
        """The workload of ``request`` on the built ``target``; its plan (``plan_of(cost.WorkloadSizes,
        target)``, shared by ``ranks`` data-parallel ranks) is refused against ``max_calls``, then said,
        before the first pipeline call. ``threads``: the command's thread governor, which the cost watch
        consults."""
        from ..metrics.flops import flops_per_call
        from ..metrics.scorers import build_scorers

        check_windows(request.windows, target.base.get("num_inference_steps"))
        names, holdout = list(request.scorers), request.holdout_seed_values
        fit, held_out = fit_and_held_out(target.prompts, request.fit_prompts, names, holdout, request.holding)
        reference, sets = build_scorers(names, target.scorers)
        proxy = dict(request.proxy) if request.proxy is not None else None
        work = cls(target, fit, held_out, list(range(request.seeds)), holdout, reference, sets, {}, proxy)
        work.threads = threads
        work.plan = work.checked_plan(
            lambda counts, built: replace(plan_of(counts, built), ranks=ranks), request
        )
        work.flops = flops_per_call(target.pipe, target.small, work.calls[0])
        return work

    def checked_plan(self, plan_of: Callable[[Any, Any], Any], request: WorkloadRequest) -> Any:
        counts = WorkloadSizes(
            prompts=len(self.fit) + len(self.held_out),
            fit_prompts=len(self.fit),
            seeds=len(self.seeds),
            holdout_seeds=len(self.holdout_seeds),
            steps=self.target.steps,
            window=request.window,
            holding=bool(self.held_out),
            batch=self.target.batch,
        )
        plan = check_calls(counts, lambda counted: plan_of(counted, self.target), request.max_calls)
        logger.info("%s", plan.describe())
        return plan

    @property
    def is_main(self) -> bool:
        """This process writes the reports (rank 0; the only one outside torchrun)."""
        return self.coordinator is None or self.coordinator.ranks.is_main

    @property
    def calls(self) -> list[dict]:
        return [{**call, **(self.proxy or {})} for call in self.target.calls(self.fit, self.seeds)]

    def watch(self, advance: Callable[[int], None], max_minutes: float | None = None) -> CostWatch:
        """``advance`` that says the estimated wall time after the first call and holds ``max_minutes``."""
        return CostWatch(self.plan, advance, max_minutes, threads=self.threads)

    def runner(self, advance: Callable[[int], None], max_minutes: float | None = None) -> CallRunner:
        """The runner of the workload's calls: journalled, shared by the ranks, counted by :meth:`watch`."""
        watch = self.watch(advance, max_minutes)
        return CallRunner(self.journal, self.coordinator, self.group_size, progress=watch, stop=self.stop)


# WorkloadRequest fields that change no result: where it is written, what it may cost, how fast it runs.
NOT_RESULTS = ("output", "max_calls", "max_minutes", "threads", "context_parallel")


def run_identity(tool: str, target: Mapping[str, Any], request: WorkloadRequest, **settings: Any) -> dict:
    """What a run's journal must match to be resumed: the tool, the ``target`` (its identity, dtype,
    device kind, size and call settings, prompts) and every setting that changes a result (``settings``:
    the tool's own, e.g. calibrate's tolerance)."""
    workload = {
        name: getattr(request, name) for name in request.__dataclass_fields__ if name not in NOT_RESULTS
    }
    return {"tool": tool, "target": dict(target), "workload": workload, "settings": settings}


def split(prompts: list, fit: int, option: str = "--fit-prompts") -> tuple[list, list]:
    """``fit`` prompts spread over the list to fit on, the rest held out (both non-empty)."""
    if len(prompts) < 2:
        raise ValueError(
            f"calibration fits on some prompts and reports on others it never saw, so it needs at least 2 "
            f"prompts; there is {len(prompts)}: give more with --prompts."
        )
    if not 1 <= fit < len(prompts):
        raise ValueError(
            f"{option} {fit}: calibration fits on some prompts and reports on the others it never "
            f"saw, so it needs 1 to {len(prompts) - 1} of the {len(prompts)} prompts; give more "
            "prompts or fewer fit prompts."
        )
    chosen = set(range(0, len(prompts), max(1, len(prompts) // fit))[:fit])
    return (
        [p for i, p in enumerate(prompts) if i in chosen],
        [p for i, p in enumerate(prompts) if i not in chosen],
    )


def fit_and_held_out(
    prompts: list, fit_count: int | None, names: list[str], holdout_seeds: list[int], holding: bool
) -> tuple[list, list]:
    """(fit, held-out) prompts; refused when a set scorer (Fréchet distance) would get too few samples.
    Without ``holding`` (analyze) every prompt is fitted on unless ``fit_count`` picks some."""
    if not holding and (fit_count is None or fit_count >= len(prompts)):
        return prompts, []
    fit, held_out = split(prompts, fit_count or max(1, len(prompts) // 2))
    minimum = SetScorer.minimum_samples
    for name in filter(is_set_scorer, names) if holding else ():
        if len(held_out) * len(holdout_seeds) < minimum:
            raise ValueError(
                f"scorer {name}: a Fréchet distance needs at least {minimum} held-out samples; give more "
                "prompts or --holdout-seeds."
            )
    return fit, held_out


def fit_and_seeds(prompts: list, seeds: list[int]) -> dict[str, Any]:
    return {"prompts": [prompt.text for prompt in prompts], "seeds": seeds}


HELD_SLACK = 1.05  # a proxy pick holds when, at full size, its loss vs the hand-picked schedule grows <= 5 %


def proxy_verdict(
    work: Workload,
    tolerance: Tolerance | None,
    pick: str,
    pick_fit,
    match_fit,
    held_rows: dict,
) -> dict | None:
    """With --proxy-size: whether the pick made at the proxy size held at full size, on the held-out
    prompts. Under an explicit --tolerance, its full-size held-out scores must reach it; otherwise (the
    default goal, the hand-picked schedule's scores, or a FLOP budget) its worst-score loss relative to the
    hand-picked schedule at full size must be at most ``HELD_SLACK`` times what it was at the proxy size
    (or than the hand-picked schedule's own, whichever is larger). ``tolerance``: the explicit one, resolved
    against the hand-picked schedule's fit scores, else ``None``."""
    if work.proxy is None:
        return None
    if pick_fit is None or pick not in held_rows:
        return {"proxy_size": work.proxy, "held": True, "why": "the pick is large-only: nothing to hold"}
    full = {name: value["mean"] for name, value in held_rows[pick]["scores"].items()}
    if tolerance is not None:
        goal = tolerance if isinstance(tolerance, dict) else dict.fromkeys(full, tolerance)
        held = passes(full, goal)
        why = f"full-size held-out scores {_scores(full)} against the tolerance {_scores(goal)}"
    else:
        match_full = {name: value["mean"] for name, value in held_rows["match"]["scores"].items()}
        at_proxy, at_full = loss_ratio(pick_fit, match_fit), loss_ratio(full, match_full)
        held = at_full <= HELD_SLACK * max(at_proxy, 1.0)
        why = (
            f"loss relative to the hand-picked schedule {at_proxy:.3f} at the proxy size, {at_full:.3f} at "
            f"full size (held: at most {HELD_SLACK:g} x max(proxy, 1))"
        )
    return {"proxy_size": work.proxy, "held": held, "why": why}


def _scores(scores: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4g}" for name, value in scores.items())
