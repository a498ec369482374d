"""What analyze, calibrate and tune share: the workload options (target, seeds, fit prompts, scorers), and
the one place that checks them all, builds the target and splits its prompts into a fit set and a held-out
set (refused before building when a prompts file is too short to hold some out)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import whole_number
from .targeting import add_target_options, setting, target_settings

EMBEDDED_FIT_PROMPTS, EMBEDDED_PROMPTS = 12, 40


def add_workload_options(parser: argparse.ArgumentParser) -> None:
    add_target_options(parser)
    parser.add_argument("--seeds", type=whole_number(1), default=None, help="seeds per prompt (default 2)")
    parser.add_argument(
        "--fit-prompts",
        type=whole_number(1),
        default=None,
        help="prompts to fit on (default: 12 of the embedded pair's 40; half of yours); calibrate "
        "holds the rest out, analyze fits on all of yours unless this picks some",
    )
    parser.add_argument(
        "--scorers",
        nargs="+",
        default=None,
        metavar="NAME",
        help="quality vs large-only: psnr, ssim, temporal, feature:dino=PATH, fd:clip=PATH, "
        "module:function, classifier (embedded); default classifier and ssim for the "
        "embedded pair, ssim otherwise",
    )
    parser.add_argument("--threads", type=whole_number(1), default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--output", type=Path, required=True, help="results folder")


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

    @property
    def calls(self) -> list[dict]:
        return self.target.calls(self.fit, self.seeds)


def prepare_workload(
    args, holding: bool, check_goal: Callable[[Any, list[str]], None] | None = None
) -> Workload:
    """Check everything the user gave, then build the target and the workload (fit / held-out split)."""
    import torch

    from ..metrics.flops import flops_per_call
    from ..metrics.scorers import build_scorers, check_scorer_names
    from ..support.files import check_output_folder
    from ..targets.resolve import build_target, check_target, given_prompts, known_family

    options, config = target_settings(args)
    check_output_folder(args.output)
    checked = check_target(options)
    if options.kind == "random":
        raise ValueError(
            f"--target {options.target}: random weights make noise; there is no quality to analyse. "
            "Use the embedded pair, your folders or your factory."
        )
    embedded = options.kind == "embedded"
    names = list(setting(args, config, "scorers", ["classifier", "ssim"] if embedded else ["ssim"]))
    check_scorer_names(names, {"classifier": None} if embedded else {})
    known = known_family(options, checked)
    if "temporal" in names and known is not None and known[0].output_field == "images":
        raise ValueError(f"scorer temporal: the {known[0].name} pipeline makes images; it needs videos.")
    if check_goal is not None:
        check_goal(args, names)
    seeds = int(setting(args, config, "seeds", 2))
    holdout_seeds = [100 + s for s in range(getattr(args, "holdout_seeds", 4))]
    fit_count = args.fit_prompts or (EMBEDDED_FIT_PROMPTS if embedded and not options.prompts else None)
    prompts = given_prompts(options, checked)
    if prompts is not None:  # a prompts file too short to hold prompts out is refused before building
        _split(prompts, fit_count, names, holdout_seeds, holding)
    _check_windows(args, options.steps)
    torch.set_num_threads(args.threads)
    target = build_target(options, checked, embedded_prompts=EMBEDDED_PROMPTS)
    _check_windows(args, target.base.get("num_inference_steps"))
    fit, held_out = _split(target.prompts, fit_count, names, holdout_seeds, holding)
    reference, sets = build_scorers(names, target.scorers)
    workload = Workload(target, fit, held_out, list(range(seeds)), holdout_seeds, reference, sets, {})
    workload.flops = flops_per_call(target.pipe, target.small, workload.calls[0])
    return workload


def _check_windows(args, steps: int | None) -> None:
    if steps is not None and getattr(args, "windows", 0) > steps:
        raise ValueError(
            f"--windows {args.windows} is longer than the run's {steps} steps; use at most that."
        )


def _split(prompts: list, fit_count: int | None, names: list[str], holdout_seeds: list[int], holding: bool):
    """(fit, held-out) prompts; refused when a set scorer (Fréchet distance) would get too few samples.
    Without ``holding`` (analyze) every prompt is fitted on unless ``fit_count`` picks some."""
    from ..metrics.scorers import SetScorer, is_set_scorer
    from ..targets.prompts import split

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


def tolerance_from(values: list[str] | None, reference: dict[str, float]) -> float | dict[str, float]:
    """``--tolerance``: None -> the reference scores; a bare number -> every score; else SCORER=MIN pairs."""
    if values is None:
        return reference
    try:
        if len(values) == 1 and "=" not in values[0]:
            return float(values[0])
        pairs = dict(value.rsplit("=", 1) for value in values)
        tolerance = {name: float(minimum) for name, minimum in pairs.items()}
    except ValueError as error:
        raise ValueError(
            f"--tolerance {' '.join(values)}: write SCORER=MIN pairs or one number ({error})."
        ) from None
    unknown = sorted(set(tolerance) - set(reference))
    if unknown:
        raise ValueError(
            f"--tolerance: unknown score {', '.join(unknown)}; scores here are {', '.join(reference)}."
        )
    return tolerance
