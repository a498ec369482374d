"""What analyze, calibrate and tune share at the command line's edge: the workload options (target, seeds,
fit prompts, scorers, budgets), parsed once into a :class:`~flowblending_accel.analysis.workload.
WorkloadRequest`; the target they name, checked and built by the one target resolver; and the workload
analysis makes on it (the fit / held-out split, the scorers, the call plan)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import add_threads_option, positive_number, whole_number
from .targeting import add_target_options, setting, target_settings

if TYPE_CHECKING:
    from ..analysis.workload import Tolerance, Workload, WorkloadRequest
    from ..targets.options import TargetOptions

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


def workload_request(args: argparse.Namespace, holding: bool) -> tuple[WorkloadRequest, TargetOptions]:
    """The workload the options ask for (flags over the config file; the embedded pair's defaults), and the
    options of the target it runs on."""
    from ..analysis.workload import WorkloadRequest

    options, config = target_settings(args)
    embedded = options.kind == "embedded"
    request = WorkloadRequest(
        output=args.output,
        scorers=tuple(setting(args, config, "scorers", ["classifier", "ssim"] if embedded else ["ssim"])),
        seeds=int(setting(args, config, "seeds", 2)),
        holdout_seeds=getattr(args, "holdout_seeds", 4),
        fit_prompts=args.fit_prompts or (EMBEDDED_FIT_PROMPTS if embedded and not options.prompts else None),
        holding=holding,
        proxy=parse_proxy_size(getattr(args, "proxy_size", None)),
        windows=getattr(args, "windows", 0),
        sensitivity_window=getattr(args, "sensitivity_window", 0) or 0,
        max_calls=args.max_calls,
        max_minutes=getattr(args, "max_minutes", None),
        threads=args.threads,
        offered_scorers=("classifier",) if embedded else (),
    )
    return request, options


def build_workload(
    request: WorkloadRequest,
    options: TargetOptions,
    plan_of: Callable[[Any, Any], Any],
    tolerance: Tolerance | None = None,
) -> Workload:
    """Check everything the user gave (``tolerance``: the parsed --tolerance), then build the target and the
    workload on it, whose plan (``plan_of(cost.WorkloadSizes, target)``) is refused against --max-calls and
    said before the first pipeline call."""
    from ..analysis.workload import Workload, check_request
    from ..support.files import check_output_folder
    from ..support.threads import use_threads
    from ..targets.resolve import build_target, check_target, given_prompts, known_family

    check_output_folder(request.output)
    checked = check_target(options)
    if options.kind == "random":
        raise ValueError(
            f"--target {options.target}: random weights make noise; there is no quality to analyse. "
            "Use the embedded pair, your folders or your factory."
        )
    known = known_family(options, checked)
    family = known[0] if known is not None else None
    check_request(request, given_prompts(options, checked), family, options.steps, tolerance)
    threads = use_threads(request.threads)
    target = build_target(options, checked, embedded_prompts=EMBEDDED_PROMPTS)
    _check_proxy(request.proxy, target)
    return Workload.prepare(request, target, plan_of, threads)


def _check_proxy(proxy, target) -> None:
    from ..targets.resolve import pipeline_takes

    for name in proxy or {}:
        if not pipeline_takes(type(target.pipe), name):
            raise ValueError(
                f"--proxy-size: {type(target.pipe).__name__} takes no {name}; give HxW for an image pipeline."
            )


def parse_tolerance(values: list[str] | None) -> Tolerance | None:
    """``--tolerance``: None (the hand-picked schedule's scores), one number for every score, or SCORER=MIN
    pairs; the names are checked against the scorers before the target is built."""
    if values is None:
        return None
    try:
        if len(values) == 1 and "=" not in values[0]:
            return float(values[0])
        pairs = dict(value.rsplit("=", 1) for value in values)
        return {name: float(minimum) for name, minimum in pairs.items()}
    except ValueError as error:
        raise ValueError(
            f"--tolerance {' '.join(values)}: write SCORER=MIN pairs or one number ({error})."
        ) from None
