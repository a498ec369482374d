"""``flowblending-accel analyze`` and ``calibrate`` on the embedded pair (or another demo-format pair).

The Python API (:func:`~flowblending_accel.analysis.divergence.divergence_curve`,
:class:`~flowblending_accel.analysis.calibrate.Calibrator`) works on any diffusers pipeline; these commands
wire it to the demo pair's prompts, classifier and held-out split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..analysis.measures import MEASURES
from .common import positive_number, whole_number


def _common(parser) -> None:
    parser.add_argument(
        "--pair", type=Path, default=None, help="demo-pair folder (default: the embedded pair)"
    )
    parser.add_argument("--steps", type=whole_number(1), default=20, help="denoising steps (default 20)")
    parser.add_argument("--guidance-scale", type=positive_number, default=3.0, help="CFG scale (default 3.0)")
    parser.add_argument(
        "--calibration-prompts", type=whole_number(1), default=12, help="prompts used (default 12 of 40)"
    )
    parser.add_argument("--seeds", type=whole_number(1), default=2, help="seeds per prompt (default 2)")
    parser.add_argument("--threads", type=whole_number(1), default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--output", type=Path, required=True, help="results folder")
    parser.add_argument(
        "--no-ssim",
        action="store_true",
        help="score quality by classifier-feature similarity alone (default: also SSIM to large-only)",
    )


def register(commands) -> None:
    _register_analyze(commands)
    _register_calibrate(commands)


def _register_analyze(commands) -> None:
    analyze = commands.add_parser(
        "analyze",
        help="velocity divergence between the two models along the trajectory",
        description=(
            "Evaluate both models on the same latent at every solver step of the large-only trajectory "
            "and report 1 - cos and relative L2 of velocities and predicted x0, and the state "
            "perturbation, per step (mean and spread over prompts x seeds). With --windows W, also "
            "measure the quality lost by running the small model on each window of W steps and "
            "rank-correlate every measure with it."
        ),
    )
    _common(analyze)
    analyze.add_argument(
        "--windows", type=whole_number(0), default=0, help="window size for the evidence run (0: skip)"
    )
    analyze.add_argument("--overlay", default="L40-S40-L20", help="schedule drawn over the curve")
    analyze.set_defaults(run=run_analyze)


def _register_calibrate(commands) -> None:
    calibrate = commands.add_parser(
        "calibrate",
        help="choose stage boundaries automatically under a quality tolerance or FLOP budget",
        description=(
            "Find the schedule (any number of stages) with the fewest FLOPs whose verified quality "
            "(feature similarity and SSIM to large-only) is at least --tolerance on every score "
            "(default: the scores of --match, e.g. L40-S40-L20, on the same calibration set), or the "
            "best one within --flop-budget. Every divergence measure proposes placements; generation "
            "verifies them. Then evaluate the result against --match and large-only on held-out "
            "prompts and seeds."
        ),
    )
    _common(calibrate)
    goal = calibrate.add_mutually_exclusive_group()
    goal.add_argument(
        "--tolerance",
        nargs="+",
        default=None,
        metavar="SCORE=MIN",
        help="minimum scores vs large-only, e.g. feature_similarity=0.97 ssim=0.6 (a bare number applies "
        "to every score)",
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
        type=whole_number(1),
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


def _check(args, calibrating: bool = False) -> None:
    """Refuse what the user got wrong before any model loads."""
    from ..demo.data import all_prompts
    from ..support.files import check_output_folder

    check_output_folder(args.output)
    if args.calibration_prompts >= len(all_prompts()):
        raise ValueError(
            f"--calibration-prompts {args.calibration_prompts} leaves no held-out prompt: use fewer "
            f"than {len(all_prompts())}."
        )
    if getattr(args, "windows", 0) > args.steps:
        raise ValueError(
            f"--windows {args.windows} is longer than the {args.steps} steps; use at most --steps."
        )
    if calibrating and args.flop_budget is not None and args.flop_budget > 1:
        raise ValueError(
            f"--flop-budget {args.flop_budget:g} is a fraction of large-only FLOPs: give one in (0, 1]."
        )
    if calibrating and args.tolerance is not None:
        names = ["feature_similarity"] if args.no_ssim else ["feature_similarity", "ssim"]
        _tolerance(args.tolerance, dict.fromkeys(names, 0.0))


def _setup(args):
    import torch

    from ..demo.calibration import demo_calls, feature_quality, split_prompts
    from ..demo.classifier import load_classifier
    from ..demo.models import CLASSIFIER_SUBFOLDER, default_pair_path, load_demo_pipeline
    from ..metrics.flops import flops_per_call

    torch.set_num_threads(args.threads)
    pipe, small = load_demo_pipeline(args.pair)
    classifier = load_classifier(Path(args.pair or default_pair_path()) / CLASSIFIER_SUBFOLDER)
    calibration, held_out = split_prompts(args.calibration_prompts)
    calls = demo_calls(calibration, list(range(args.seeds)), args.steps, args.guidance_scale)
    flops = flops_per_call(pipe, small, demo_calls(calibration[:1], [0], 1, args.guidance_scale)[0])
    return (
        pipe,
        small,
        classifier,
        calls,
        feature_quality(classifier, pixel=not args.no_ssim),
        flops,
        held_out,
    )


def run_analyze(args: argparse.Namespace) -> int:
    from ..analysis.divergence import divergence_curve
    from ..analysis.evidence import window_evidence
    from ..analysis.plots import divergence_plot
    from ..support.files import write_atomic
    from ..support.progress import progress

    _check(args)
    pipe, small, _, calls, quality, _, _ = _setup(args)
    total = len(calls) * (1 + (args.steps // args.windows if args.windows else 0))
    with progress("analysing (clips generated)", total) as advance:
        curve = divergence_curve(pipe, small, calls, args.guidance_scale, progress=advance)
        evidence = (
            window_evidence(pipe, small, calls, curve, args.windows, quality, progress=advance)
            if args.windows
            else None
        )
    document = {
        "command": args.command_line,
        "curve": curve.to_dict(),
        "evidence": evidence.to_dict() if evidence else None,
    }
    write_atomic(args.output / "analysis.json", (json.dumps(document, indent=2) + "\n").encode())
    write_atomic(args.output / "divergence.png", divergence_plot(curve, args.overlay, evidence))
    print(
        json.dumps(
            {
                "sigmas": [round(s, 3) for s in curve.sigmas],
                **{m: [round(v, 4) for v in curve.mean(m)] for m in curve.values},
                "evidence_spearman": evidence.correlations if evidence else None,
            },
            indent=1,
        )
    )
    print(f"analysis.json and divergence.png written to {args.output}/")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from ..analysis.calibrate import Calibrator, calibrate_budget, calibrate_tolerance
    from ..analysis.plots import divergence_plot
    from ..analysis.report import calibration_markdown
    from ..demo.calibration import evaluate_schedules
    from ..support.files import write_atomic
    from ..support.progress import progress

    _check(args, calibrating=True)
    pipe, small, classifier, calls, quality, flops, held_out = _setup(args)
    with progress("calibrating (clips generated)", None) as advance:
        calibrator = Calibrator(
            pipe,
            small,
            calls,
            args.guidance_scale,
            flops,
            quality,
            measure=args.measure,
            progress=advance,
            sensitivity_window=args.sensitivity_window,
        )
        reference = calibrator.verify(calibrator.propose(args.match)).quality
        if args.flop_budget is not None:
            result = calibrate_budget(calibrator, args.flop_budget, reference)
        else:
            result = calibrate_tolerance(calibrator, _tolerance(args.tolerance, reference), reference)
        seeds = [100 + s for s in range(args.holdout_seeds)]
        held = evaluate_schedules(
            pipe,
            small,
            classifier,
            {"match": args.match, "calibrated": result.schedule},
            held_out,
            seeds,
            args.steps,
            args.guidance_scale,
            flops,
            progress=advance,
        )
    document = {
        "command": args.command_line,
        "calibration": result.to_dict(),
        "held_out": {"prompts": held_out, "seeds": seeds, "rows": held},
        "flops_per_call": flops,
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


def _tolerance(values: list[str] | None, reference: dict[str, float]) -> float | dict[str, float]:
    """``--tolerance``: None -> the reference scores; one bare number -> every score; else SCORE=MIN pairs."""
    if values is None:
        return reference
    try:
        if len(values) == 1 and "=" not in values[0]:
            return float(values[0])
        pairs = dict(value.split("=", 1) for value in values)
        tolerance = {name: float(minimum) for name, minimum in pairs.items()}
    except ValueError as error:
        raise ValueError(
            f"--tolerance {' '.join(values)}: write SCORE=MIN pairs or one number ({error})."
        ) from error
    unknown = sorted(set(tolerance) - set(reference))
    if unknown:
        raise ValueError(
            f"--tolerance: unknown score {', '.join(unknown)}; scores here are {', '.join(reference)}."
        )
    return tolerance
