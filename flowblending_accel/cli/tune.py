"""``flowblending-accel tune``: the whole stack tuned jointly on any target."""

from __future__ import annotations

import argparse
from typing import Any

from ..core.schedule import PAPER_SCHEDULE
from .common import adaptive_window, positive_number, whole_number
from .workload import add_workload_options

QUALITY_FREE = ("compile", "attention", "engine", "memory")  # stack kinds that do not change the output


def register(commands) -> None:
    tune = commands.add_parser(
        "tune",
        help="tune boundaries, step count and cache threshold jointly under a tolerance or a budget",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Search stage boundaries (any number of stages), the step count of a step-reduction solver,\n"
            "a FirstBlockCache threshold and, for a distilled small model, guidance on the small stage,\n"
            "jointly. Quality is against the large-only, full-step, uncached output of the same noise.\n"
            "Goal: the fewest FLOPs keeping --tolerance (default: the scores of --match at full steps),\n"
            "the best quality within --flop-budget, or within --latency-budget (measured, interleaved).\n"
            "Writes tune.json, tune.md, tune.png (the Pareto frontier) and tuned.toml (the chosen schedule\n"
            "and stack, as the config file, bench and check take them), validated on held-out prompts."
        ),
    )
    add_workload_options(tune)
    goal = tune.add_mutually_exclusive_group()
    goal.add_argument("--tolerance", nargs="+", default=None, metavar="SCORER=MIN", help="minimum scores")
    goal.add_argument(
        "--flop-budget", type=positive_number, default=None, help="fraction of large-only FLOPs"
    )
    goal.add_argument(
        "--latency-budget", type=positive_number, default=None, help="fraction of large-only wall time"
    )
    tune.add_argument("--match", default=PAPER_SCHEDULE, help="hand-picked schedule to match (default)")
    tune.add_argument(
        "--step-counts",
        nargs="+",
        type=whole_number(2),
        default=None,
        help="solver step counts to try (default: the target's, and 70, 50, 40, 30, 25, 20 %% of it)",
    )
    tune.add_argument("--solver", default=None, help="step-reduction solver (default: one the family takes)")
    tune.add_argument(
        "--cache-thresholds",
        nargs="*",
        type=positive_number,
        default=None,
        help="FirstBlockCache thresholds to try, ascending (default 0.05 0.1 0.15 0.2 0.3; none: no cache)",
    )
    tune.add_argument(
        "--small-distilled", action="store_true", help="also try the small stage without guidance"
    )
    tune.add_argument(
        "--adaptive",
        type=adaptive_window,
        default=None,
        metavar="WINDOW",
        help="also search the switch threshold of an adaptive schedule (each sample enters the small stage "
        "when the large model's output settles, between the window's floor and ceiling), e.g. "
        "L20:60-S-L20 (or L20:60-S, ending small)",
    )
    tune.add_argument(
        "--extra-stack",
        nargs="*",
        default=(),
        help="members that do not change the output (compile, attn:<backend>, offload), added to the "
        "written stack and the timing",
    )
    tune.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar='"SCHEDULE [SOLVER:N] [fbc:T]"',
        help="a hand-made stack to score beside the pick, on the fit and held-out sets and the plot "
        '(repeatable), e.g. --compare "L40-S40-L20 dpm++:10 fbc:0.2"',
    )
    tune.add_argument("--grid", action="store_true", help="also run the exhaustive grid of the space")
    tune.add_argument("--repeats", type=whole_number(1), default=5, help="timing rounds (default 5)")
    tune.add_argument(
        "--holdout-seeds", type=whole_number(1), default=4, help="held-out seeds per held-out prompt"
    )
    tune.set_defaults(run=run_tune, extra="demo")


def check_options(args: argparse.Namespace) -> None:
    """Everything checkable before the target is built."""
    from ..accelerators import as_configs
    from ..analysis.tune import Point
    from ..core.named_schedulers import SCHEDULER_NAMES
    from ..core.schedule import Schedule

    Schedule.parse(args.match)
    if args.flop_budget is not None and args.flop_budget > 1:
        raise ValueError(
            f"--flop-budget {args.flop_budget:g} is a fraction of large-only FLOPs: give one in (0, 1]."
        )
    if args.latency_budget is not None and args.latency_budget > 1:
        raise ValueError(
            f"--latency-budget {args.latency_budget:g} is a fraction of large-only time: (0, 1]."
        )
    if args.solver is not None and args.solver not in SCHEDULER_NAMES:
        raise ValueError(f"--solver {args.solver!r} is unknown; choose one of {', '.join(SCHEDULER_NAMES)}.")
    thresholds = args.cache_thresholds
    if thresholds is not None and list(thresholds) != sorted(thresholds):
        raise ValueError(
            f"--cache-thresholds {' '.join(map(str, thresholds))}: give them in ascending order."
        )
    for config in as_configs(list(args.extra_stack)):
        if config.kind not in QUALITY_FREE:
            raise ValueError(
                f"--extra-stack {config.spec}: only members that leave the output as it is go there "
                f"({', '.join(QUALITY_FREE)}); tune searches steps and caches itself."
            )
    for text in args.compare:
        Point.parse(text, 100)
    if args.context_parallel and args.cache_thresholds:
        raise ValueError(
            f"--cache-thresholds with --context-parallel {args.context_parallel}: a FirstBlockCache decides "
            "per rank from its own shard whether to skip, and the ranks would hang; give --cache-thresholds "
            "with nothing after it (tune tries no cache under context parallelism)."
        )
    if args.max_calls is not None and args.grid:
        raise ValueError("--grid runs every point of the space; it takes no --max-calls.")


def run_tune(args: argparse.Namespace) -> int:
    """Check the options, parse them into a :class:`~flowblending_accel.analysis.tune_run.TuneRequest`, build
    the workload, tune on it (analysis) and write tune.json, tuned.toml, tune.md and tune.png."""
    import json

    from ..analysis.tune_report import tune_markdown, tune_plot, tuned_toml
    from ..analysis.tune_run import tune
    from ..support.files import write_atomic
    from ..support.progress import progress
    from .workload import workload_run

    check_options(args)
    request, options = tune_request(args)
    settings = request.result_settings()
    with (
        workload_run(
            request.workload,
            options,
            request.plan_of,
            request.tolerance,
            "tune",
            settings,
            args.resume,
            args.overwrite,
        ) as work,
        progress("tuning (pipeline calls)", work.plan.at_most, work.is_main) as bar,
    ):
        result = tune(request, work, _row_timer(work.target, request.repeats), bar)
    if not work.is_main:
        return 0
    write_atomic(
        args.output / "tune.json", (json.dumps(result.to_dict(), indent=2, default=str) + "\n").encode()
    )
    write_atomic(args.output / "tuned.toml", tuned_toml(result).encode())
    write_atomic(args.output / "tune.md", tune_markdown(result).encode())
    write_atomic(args.output / "tune.png", tune_plot(result))
    print((args.output / "tune.md").read_text())
    return 0


def tune_request(args: argparse.Namespace):
    """The typed request of ``tune``'s options (its workload's among them), and the target's options."""
    import shlex

    from ..analysis.tune_run import TuneRequest
    from .workload import parse_tolerance, workload_request

    workload, options = workload_request(args, holding=True)
    request = TuneRequest(
        workload=workload,
        match=args.match,
        tolerance=parse_tolerance(args.tolerance),
        flop_budget=args.flop_budget,
        latency_budget=args.latency_budget,
        step_counts=None if args.step_counts is None else tuple(args.step_counts),
        solver=args.solver,
        cache_thresholds=None if args.cache_thresholds is None else tuple(args.cache_thresholds),
        small_distilled=args.small_distilled,
        adaptive=args.adaptive,
        extra_stack=tuple(args.extra_stack),
        compare=tuple(args.compare),
        grid=args.grid,
        repeats=args.repeats,
        command_line=args.command_line,
        tuned_target=_tuned_target(args, options),
        bench_command=f"flowblending-accel bench --config {shlex.quote(str(args.output / 'tuned.toml'))}",
    )
    return request, options


TUNED_SETTINGS = ("target", "large", "small", "pair", "prompts", "height", "width", "frames", "steps")


def _tuned_target(args: argparse.Namespace, options) -> dict[str, Any]:
    """The target tune runs on: its identity, and the settings that rebuild it (local paths relative to the
    output folder, where tuned.toml is written, so the folders can move together)."""
    import os
    from pathlib import Path

    from ..targets.options import IDENTITY_SETTINGS

    settings = {}
    for name in TUNED_SETTINGS:
        value = getattr(options, name)
        if value is None or (name == "target" and value == "embedded" and options.large is not None):
            continue
        local = isinstance(value, str) and Path(value).exists()
        settings[name] = os.path.relpath(Path(value).resolve(), args.output.resolve()) if local else value
    named = {name: settings[name] for name in IDENTITY_SETTINGS if name in settings}
    return {"identity": options.identity(), "for": named, "settings": settings}


def _row_timer(target, repeats: int):
    """Rows ``(label, schedule, stack)`` measured interleaved by bench, as its table rows (tune's timing)."""
    from ..bench.runner import Row, measure_rows, summarise

    def time_rows(rows):
        measured = measure_rows(
            target,
            [Row(label, schedule, stack) for label, schedule, stack in rows],
            repeats,
            count_flops="derived",
        )
        return summarise(measured, lambda *_: None)

    return time_rows
