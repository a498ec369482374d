"""``flowblending-accel analyze`` and ``calibrate`` on any target: the embedded pair, your folders or your
factory. Calibration fits on some prompts and seeds and reports on the others, which it never saw."""

from __future__ import annotations

import argparse
import json
import textwrap
from dataclasses import replace

from ..analysis.measures import MEASURES
from ..core.schedule import PAPER_SCHEDULE
from .common import adaptive_window, positive_number, whole_number
from .workload import add_workload_options, parse_tolerance, workload_request, workload_run


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
    add_workload_options(analyze)
    analyze.add_argument(
        "--windows", type=whole_number(0), default=0, help="window size of the evidence run (0: skip)"
    )
    analyze.add_argument("--overlay", default=PAPER_SCHEDULE, help="schedule drawn over the curve")
    analyze.set_defaults(run=run_analyze, extra="demo")
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
    add_workload_options(calibrate)
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
        "--match", default=PAPER_SCHEDULE, help="hand-picked schedule to beat (default L40-S40-L20)"
    )
    calibrate.add_argument(
        "--adaptive",
        type=adaptive_window,
        default=None,
        metavar="WINDOW",
        help="fit the threshold of an adaptive schedule instead of fixed boundaries: each sample enters the "
        "small stage when the large model's output settles, between the window's floor and ceiling, e.g. "
        "L20:60-S-L20 (or L20:60-S, ending small)",
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
    calibrate.set_defaults(run=run_calibrate, extra="demo")


def run_analyze(args: argparse.Namespace) -> int:
    from ..analysis.cost import analyze_plan
    from ..analysis.divergence import divergence_curve
    from ..analysis.evaluate import quality_function
    from ..analysis.evidence import window_evidence
    from ..analysis.plots import divergence_plot
    from ..analysis.report import analysis_markdown
    from ..analysis.workload import fit_and_seeds
    from ..support.files import write_atomic
    from ..support.progress import progress

    request, options = workload_request(args, holding=False)
    plan_of = lambda counts, _: analyze_plan(counts)  # noqa: E731
    with workload_run(request, options, plan_of, None, "analyze", {}, args.resume, args.overwrite) as work:
        target, quality = work.target, quality_function(work.scorers)
        with progress("analysing (pipeline calls)", work.plan.at_most, work.is_main) as bar:
            runner = work.runner(bar, request.max_minutes)
            curve = divergence_curve(
                target.pipe,
                target.small,
                work.calls,
                target.guidance_scale,
                output_field=target.output_field,
                runner=runner,
                quality=quality,
                keep_outputs=bool(args.windows),  # only the evidence run scores against them
            )
            evidence = (
                window_evidence(
                    target.pipe,
                    target.small,
                    work.calls,
                    curve,
                    args.windows,
                    quality,
                    target.output_field,
                    runner=runner,
                )
                if args.windows
                else None
            )
    if not work.is_main:
        return 0
    document = {
        "command": args.command_line,
        "target": target.description,
        "fit": fit_and_seeds(work.fit, work.seeds),
        "proxy_size": work.proxy,
        "run": runner.progress.report(),
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
    from ..analysis.adaptive_fit import calibrate_adaptive
    from ..analysis.calibrate import Calibrator, calibrate_budget, calibrate_tolerance
    from ..analysis.cost import calibrate_plan
    from ..analysis.evaluate import evaluate_schedules, quality_function
    from ..analysis.plots import divergence_plot
    from ..analysis.report import calibration_markdown
    from ..analysis.workload import fit_and_seeds, proxy_verdict, resolve_tolerance
    from ..support.files import write_atomic
    from ..support.progress import progress

    if args.flop_budget is not None and args.flop_budget > 1:
        raise ValueError(
            f"--flop-budget {args.flop_budget:g} is a fraction of large-only FLOPs: give one in (0, 1]."
        )
    tolerance = parse_tolerance(args.tolerance)

    if args.adaptive is not None:
        args.sensitivity_window = 0  # the threshold is fit on the self-differences, not on placements

    def plan_of(counts, _target):
        measures = 1 if args.measure else len(MEASURES)
        counts = counts if args.measure is None and args.adaptive is None else replace(counts, window=0)
        budget_goal = args.flop_budget is not None
        return calibrate_plan(counts, measures, budget_goal, adaptive=args.adaptive is not None)

    request, options = workload_request(args, holding=True)
    settings = {
        "tolerance": tolerance,
        "flop_budget": args.flop_budget,
        "match": args.match,
        "measure": args.measure,
        "adaptive": None if args.adaptive is None else args.adaptive.adaptive_text(),
    }
    with workload_run(
        request, options, plan_of, tolerance, "calibrate", settings, args.resume, args.overwrite
    ) as work:
        target = work.target
        with progress("calibrating (pipeline calls)", work.plan.at_most, work.is_main) as bar:
            runner = work.runner(bar, request.max_minutes)
            calibrator = Calibrator(
                target.pipe,
                target.small,
                work.calls,
                work.target.guidance_scale,
                work.flops,
                quality_function(work.scorers),
                measure=args.measure,
                sensitivity_window=args.sensitivity_window,
                output_field=target.output_field,
                runner=runner,
            )
            reference = calibrator.verify(calibrator.propose(args.match)).quality
            if args.adaptive is not None:
                goal = resolve_tolerance(tolerance, reference)  # a bare number: that minimum for every score
                goal = dict(goal) if isinstance(goal, dict) else dict.fromkeys(reference, float(goal))
                result = calibrate_adaptive(calibrator, args.adaptive, goal, args.flop_budget, reference)
            elif args.flop_budget is not None:
                result = calibrate_budget(calibrator, args.flop_budget, reference)
            else:
                result = calibrate_tolerance(calibrator, resolve_tolerance(tolerance, reference), reference)
            held = evaluate_schedules(
                target.pipe,
                target.small,
                target.calls(work.held_out, work.holdout_seeds),
                {"match": args.match, "calibrated": result.schedule},
                work.scorers,
                work.set_scorers,
                work.flops,
                target.output,
                runner=runner,
            )
    if not work.is_main:
        return 0
    document = {
        "command": args.command_line,
        "target": target.description,
        "run": runner.progress.report(),
        "proxy": proxy_verdict(
            work,
            None if tolerance is None else resolve_tolerance(tolerance, reference),
            "calibrated",
            result.quality,
            reference,
            held,
        ),
        "calibration": result.to_dict(),
        "fit": fit_and_seeds(work.fit, work.seeds),
        "held_out": {**fit_and_seeds(work.held_out, work.holdout_seeds), "rows": held},
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
