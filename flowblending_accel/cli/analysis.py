"""``flowblending-accel analyze`` and ``calibrate`` on any target: the embedded pair, your folders or your
factory. Calibration fits on some prompts and seeds and reports on the others, which it never saw."""

from __future__ import annotations

import argparse
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..analysis.measures import MEASURES
from .common import positive_number, whole_number
from .targeting import add_target_options, setting, target_settings

EMBEDDED_FIT_PROMPTS, EMBEDDED_PROMPTS = 12, 40


def _common(parser) -> None:
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


def register(commands) -> None:
    analyze = commands.add_parser(
        "analyze",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="velocity divergence between the two models along the trajectory",
        description=textwrap.fill(
            "Evaluate both models on the same latent at every solver step of the large-only trajectory and "
            "report 1 - cos and relative L2 of velocities and predicted x0, and the state perturbation, per "
            "step (mean and spread over the fit prompts x seeds). With --windows W, also measure the quality "
            "lost by running the small model on each window of W steps and rank-correlate every measure "
            "with it.",
            100,
        ),
    )
    _common(analyze)
    analyze.add_argument(
        "--windows", type=whole_number(0), default=0, help="window size of the evidence run (0: skip)"
    )
    analyze.add_argument("--overlay", default="L40-S40-L20", help="schedule drawn over the curve")
    analyze.set_defaults(run=run_analyze)
    calibrate = commands.add_parser(
        "calibrate",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="choose stage boundaries automatically under a quality tolerance or FLOP budget",
        description=textwrap.fill(
            "Find the schedule (any number of stages) with the fewest FLOPs whose verified quality is at "
            "least --tolerance on every scorer (default: the scores of --match on the same fit set), or the "
            "best one "
            "within --flop-budget. Every divergence measure proposes placements; generation verifies them. "
            "Then compare the result with --match and large-only on the held-out prompts and seeds.",
            100,
        ),
    )
    _common(calibrate)
    goal = calibrate.add_mutually_exclusive_group()
    goal.add_argument(
        "--tolerance",
        nargs="+",
        default=None,
        metavar="SCORER=MIN",
        help="minimum scores vs large-only, e.g. ssim=0.6 classifier=0.97 (a bare number: every one)",
    )
    goal.add_argument(
        "--flop-budget", type=positive_number, default=None, help="maximum FLOPs as a fraction of large-only"
    )
    calibrate.add_argument(
        "--match", default="L40-S40-L20", help="hand-picked schedule to beat (default L40-S40-L20)"
    )
    calibrate.add_argument(
        "--measure",
        choices=MEASURES,
        default=None,
        help="propose placements from this divergence measure only (default: every measure)",
    )
    calibrate.add_argument(
        "--sensitivity-window",
        type=whole_number(0),
        default=2,
        help="also measure the quality lost with the small model on each window of this many "
        "steps and propose placements from it (0: divergence proxies only; default 2)",
    )
    calibrate.add_argument(
        "--holdout-seeds",
        type=whole_number(1),
        default=4,
        help="held-out seeds per held-out prompt (default 4)",
    )
    calibrate.set_defaults(run=run_calibrate)


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


def _prepare(args, calibrating: bool) -> Workload:
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
    if calibrating:
        _check_goal(args, names)
    seeds = int(setting(args, config, "seeds", 2))
    holdout_seeds = [100 + s for s in range(getattr(args, "holdout_seeds", 4))]
    fit_count = args.fit_prompts or (EMBEDDED_FIT_PROMPTS if embedded and not options.prompts else None)
    prompts = given_prompts(options, checked)
    if prompts is not None:  # a prompts file too short to hold prompts out is refused before building
        _split(prompts, fit_count, names, holdout_seeds, calibrating)
    _check_windows(args, options.steps)
    torch.set_num_threads(args.threads)
    target = build_target(options, checked, embedded_prompts=EMBEDDED_PROMPTS)
    _check_windows(args, target.base.get("num_inference_steps"))
    fit, held_out = _split(target.prompts, fit_count, names, holdout_seeds, calibrating)
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


def _check_goal(args, names: list[str]) -> None:
    if args.flop_budget is not None and args.flop_budget > 1:
        raise ValueError(
            f"--flop-budget {args.flop_budget:g} is a fraction of large-only FLOPs: give one in (0, 1]."
        )
    if args.tolerance is not None:
        reference = [name for name in names if not name.startswith("fd:")]
        _tolerance(args.tolerance, dict.fromkeys(reference, 0.0))


def run_analyze(args: argparse.Namespace) -> int:
    from ..analysis.divergence import divergence_curve
    from ..analysis.evaluate import quality_function
    from ..analysis.evidence import window_evidence
    from ..analysis.plots import divergence_plot
    from ..analysis.report import analysis_markdown
    from ..support.files import write_atomic
    from ..support.progress import progress

    work = _prepare(args, calibrating=False)
    calls, target = work.calls, work.target
    steps = target.base.get("num_inference_steps", 0)
    total = len(calls) * (1 + (steps // args.windows if args.windows else 0))
    with progress("analysing (pipeline calls)", total) as advance:
        curve = divergence_curve(
            target.pipe,
            target.small,
            calls,
            work.target.guidance_scale,
            progress=advance,
            output_field=target.output_field,
        )
        evidence = (
            window_evidence(
                target.pipe,
                target.small,
                calls,
                curve,
                args.windows,
                quality_function(work.scorers),
                target.output_field,
                progress=advance,
            )
            if args.windows
            else None
        )
    document = {
        "command": args.command_line,
        "target": target.description,
        "fit": _set(work.fit, work.seeds),
        "curve": curve.to_dict(),
        "evidence": evidence.to_dict() if evidence else None,
    }
    write_atomic(args.output / "analysis.json", (json.dumps(document, indent=2) + "\n").encode())
    write_atomic(args.output / "divergence.png", divergence_plot(curve, args.overlay, evidence))
    write_atomic(args.output / "analysis.md", analysis_markdown(document).encode())
    print((args.output / "analysis.md").read_text())
    print(f"analysis.json, analysis.md and divergence.png written to {args.output}/")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from ..analysis.calibrate import Calibrator, calibrate_budget, calibrate_tolerance
    from ..analysis.evaluate import evaluate_schedules, quality_function
    from ..analysis.plots import divergence_plot
    from ..analysis.report import calibration_markdown
    from ..support.files import write_atomic
    from ..support.progress import progress

    work = _prepare(args, calibrating=True)
    target = work.target
    with progress("calibrating (pipeline calls)", None) as advance:
        calibrator = Calibrator(
            target.pipe,
            target.small,
            work.calls,
            work.target.guidance_scale,
            work.flops,
            quality_function(work.scorers),
            measure=args.measure,
            progress=advance,
            sensitivity_window=args.sensitivity_window,
            output_field=target.output_field,
        )
        reference = calibrator.verify(calibrator.propose(args.match)).quality
        if args.flop_budget is not None:
            result = calibrate_budget(calibrator, args.flop_budget, reference)
        else:
            result = calibrate_tolerance(calibrator, _tolerance(args.tolerance, reference), reference)
        held_calls = target.calls(work.held_out, work.holdout_seeds)
        names = [prompt.text for seed in work.holdout_seeds for prompt in work.held_out]
        held = evaluate_schedules(
            target.pipe,
            target.small,
            held_calls,
            names,
            {"match": args.match, "calibrated": result.schedule},
            work.scorers,
            work.set_scorers,
            work.flops,
            target.output,
            progress=advance,
        )
    document = {
        "command": args.command_line,
        "target": target.description,
        "calibration": result.to_dict(),
        "fit": _set(work.fit, work.seeds),
        "held_out": {**_set(work.held_out, work.holdout_seeds), "rows": held},
        "flops_per_call": work.flops,
        "scorers": [s.name for s in work.scorers + work.set_scorers],
        "sensitivity": calibrator.evidence.to_dict() if calibrator.evidence else None,
    }
    write_atomic(
        args.output / "calibration.json", (json.dumps(document, indent=2, default=str) + "\n").encode()
    )
    write_atomic(args.output / "calibration.md", calibration_markdown(document).encode())
    write_atomic(
        args.output / "divergence.png",
        divergence_plot(result.curve, result.schedule, calibrator.evidence, args.match),
    )
    print((args.output / "calibration.md").read_text())
    return 0


def _set(prompts: list, seeds: list[int]) -> dict[str, Any]:
    return {"prompts": [prompt.text for prompt in prompts], "seeds": seeds}


def _tolerance(values: list[str] | None, reference: dict[str, float]) -> float | dict[str, float]:
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
