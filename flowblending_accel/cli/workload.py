"""What analyze, calibrate and tune share: the workload options (target, seeds, fit prompts, scorers), and
the one place that checks them all, builds the target and splits its prompts into a fit set and a held-out
set (refused before building when a prompts file is too short to hold some out)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import add_threads_option, positive_number, whole_number
from .targeting import add_target_options, setting, target_settings

if TYPE_CHECKING:
    from ..analysis.workload import Workload

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
    add_threads_option(parser)
    parser.add_argument("--output", type=Path, required=True, help="results folder")
    budget = parser.add_argument_group(
        "cost",
        "The pipeline calls the command will make are printed before the first one, and the estimated wall "
        "time after it. A plan that cannot fit a budget is refused, naming a smaller plan that fits.",
    )
    budget.add_argument(
        "--max-calls", type=whole_number(1), default=None, help="pipeline calls the whole run may make"
    )
    budget.add_argument(
        "--max-minutes",
        type=positive_number,
        default=None,
        help="wall time the whole run may take (checked at the first call's time)",
    )
    budget.add_argument(
        "--proxy-size",
        default=None,
        metavar="HxWxF",
        help="fit (analyse, calibrate, tune) at this smaller size, e.g. 240x416x9 (HxW for images); the "
        "held-out prompts run at the full size, and the report says whether the pick held there",
    )


PROXY_NAMES = ("height", "width", "num_frames")


def parse_proxy_size(text: str | None) -> dict[str, int] | None:
    """``--proxy-size 240x416x9`` (or ``240x416`` for images) as call arguments."""
    if text is None:
        return None
    parts = text.lower().split("x")
    if len(parts) not in (2, 3) or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ValueError(
            f"--proxy-size {text!r}: write HEIGHTxWIDTHxFRAMES (e.g. 240x416x9), or HxW for images."
        )
    return dict(zip(PROXY_NAMES, map(int, parts), strict=False))


def prepare_workload(
    args,
    holding: bool,
    check_goal: Callable[[Any, list[str]], None] | None = None,
    plan_of: Callable[[Any, Any], Any] | None = None,
) -> Workload:
    """Check everything the user gave, then build the target and the workload (fit / held-out split), and
    count its plan (``plan_of(cost.WorkloadSizes, target)``): refused against --max-calls, printed, before the
    first pipeline call."""

    from ..analysis.workload import Workload, fit_and_held_out
    from ..metrics.flops import flops_per_call
    from ..metrics.scorers import build_scorers, check_scorer_names
    from ..support.files import check_output_folder
    from ..support.threads import use_threads
    from ..targets.resolve import build_target, check_target, given_prompts, known_family

    options, config = target_settings(args)
    check_output_folder(args.output)
    proxy = parse_proxy_size(getattr(args, "proxy_size", None))
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
        fit_and_held_out(prompts, fit_count, names, holdout_seeds, holding)
    _check_windows(args, options.steps)
    threads = use_threads(args.threads)
    target = build_target(options, checked, embedded_prompts=EMBEDDED_PROMPTS)
    _check_windows(args, target.base.get("num_inference_steps"))
    fit, held_out = fit_and_held_out(target.prompts, fit_count, names, holdout_seeds, holding)
    reference, sets = build_scorers(names, target.scorers)
    _check_proxy(proxy, target)
    workload = Workload(target, fit, held_out, list(range(seeds)), holdout_seeds, reference, sets, {}, proxy)
    workload.threads = threads
    if plan_of is not None:
        workload.plan = _checked_plan(args, workload, plan_of)
    workload.flops = flops_per_call(target.pipe, target.small, workload.calls[0])
    return workload


def _checked_plan(args, work: Workload, plan_of):
    import sys

    from ..analysis.cost import WorkloadSizes, check_calls

    counts = WorkloadSizes(
        prompts=len(work.fit) + len(work.held_out),
        fit_prompts=len(work.fit),
        seeds=len(work.seeds),
        holdout_seeds=len(work.holdout_seeds),
        steps=work.target.steps,
        window=getattr(args, "windows", 0) or getattr(args, "sensitivity_window", 0) or 0,
        holding=bool(work.held_out),
        batch=work.target.batch,
    )
    plan = check_calls(counts, lambda counted: plan_of(counted, work.target), args.max_calls)
    print(plan.describe(), file=sys.stderr, flush=True)
    return plan


def _check_proxy(proxy: dict[str, int] | None, target) -> None:
    from ..targets.resolve import pipeline_takes

    for name in proxy or {}:
        if not pipeline_takes(type(target.pipe), name):
            raise ValueError(
                f"--proxy-size: {type(target.pipe).__name__} takes no {name}; give HxW for an image pipeline."
            )


def _check_windows(args, steps: int | None) -> None:
    if steps is not None and getattr(args, "windows", 0) > steps:
        raise ValueError(
            f"--windows {args.windows} is longer than the run's {steps} steps; use at most that."
        )


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


def explicit_tolerance(args, reference: dict[str, float]) -> float | dict[str, float] | None:
    """``--tolerance`` resolved against ``reference`` (the hand-picked schedule's fit scores), or ``None``
    when the command was given none."""
    values = getattr(args, "tolerance", None)
    return None if values is None else tolerance_from(values, reference)
