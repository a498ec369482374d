"""A workload: the fit and held-out prompts and seeds a command scores schedules on, with its scorers and its
call plan, and the verdict on a pick fitted at a smaller (proxy) size. The command line builds one from its
options (``cli/workload``); analyze, calibrate and tune run on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..metrics.scorers import SetScorer, is_set_scorer
from .cost import CostWatch
from .scores import loss_ratio, passes


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

    @property
    def calls(self) -> list[dict]:
        return [{**call, **(self.proxy or {})} for call in self.target.calls(self.fit, self.seeds)]

    def watch(self, advance: Callable[[int], None], max_minutes: float | None = None) -> CostWatch:
        """``advance`` that prints the estimated wall time after the first call and holds ``max_minutes``."""
        return CostWatch(self.plan, advance, max_minutes, threads=self.threads)


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
    tolerance: float | dict[str, float] | None,
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
