"""``flowblending-accel check``: the performance-regression gate for pull requests.

Exit codes: 0 every metric within its margin; 1 a regression (or a metric no longer produced); 2 a usage
error (bad arguments or expected file); 3 no regression, but the expected file is out of date (an
improvement or change beyond its margin, or a metric without an expectation): review it and run `--update`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import add_threads_option, whole_number
from .targeting import TARGET_FLAGS, add_target_options

DEFAULT_EXPECTED = Path("flowblending-expected.csv")  # in the folder check runs from, beside the code


def register(commands) -> None:
    check = commands.add_parser(
        "check",
        help="CI gate: fail a change that regresses routing, FLOPs, recompiles, caching or the speedup",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument(
        "--expected",
        type=Path,
        default=None,
        help="expected-values CSV (scenario,metric,expected,margin); default: [check] expected in the "
        f"config file, else {DEFAULT_EXPECTED}",
    )
    check.add_argument(
        "--scenario", nargs="+", default=None, help="scenarios to run (default: those in the file)"
    )
    check.add_argument(
        "--update", action="store_true", help="rewrite the expected file with the measured values"
    )
    check.add_argument(
        "--ratio", action="store_true", help="also measure speedup ratios (interleaved, one process)"
    )
    check.add_argument(
        "--repeats", type=whole_number(1), default=5, help="rounds for the ratio tier (default 5)"
    )
    check.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        metavar="PREFIX",
        help="gate only the metrics starting with these prefixes, e.g. speedup. (default: all)",
    )
    check.add_argument("--summary", type=Path, default=None, help="write a markdown summary here")
    check.add_argument(
        "--benchmark-json", type=Path, default=None, help="write github-action-benchmark JSON here"
    )
    add_threads_option(check)
    check.add_argument(
        "--schedule", default=None, help="the command line's target: its schedule (default L40-S40-L20)"
    )
    check.add_argument(
        "--stack", nargs="*", default=None, help="the command line's target: its accelerators (default none)"
    )
    add_target_options(check)  # for the config file's scenarios: flags override what the file says
    check.set_defaults(run=run, extra="demo")


def _scenarios(args, expectations, config):
    """The scenarios to run: ``--scenario``, else the command line's target (scenario ``target``), else the
    config file's, else those in the expected file."""
    from ..check.scenarios import SCENARIOS, user_scenario, user_scenarios

    flags = {name: getattr(args, name, None) for name in TARGET_FLAGS}
    known = {**SCENARIOS, **user_scenarios(config, flags)}
    configured = [entry["name"] for entry in config.check.get("scenarios", [])]
    if args.target is not None or args.large is not None:
        entry = {"name": "target", "schedule": args.schedule, "stack": args.stack, "ratio_baseline": "L100"}
        known["target"] = user_scenario(entry, config, flags)
        configured = ["target"]
    elif args.schedule is not None or args.stack is not None:
        raise ValueError(
            "--schedule/--stack set the command line's target: name one with --target or --large/--small "
            "(scenarios in the config file carry their own)."
        )
    names = args.scenario or configured or sorted({e.scenario for e in expectations})
    if not names:
        raise ValueError(
            f"{args.expected} has no scenarios; name some with --scenario ({', '.join(known)}) or in "
            "the config file's [[check.scenarios]]."
        )
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown scenario(s) {unknown}; choose from {', '.join(known)}.")
    return [known[n] for n in names]


def _default_expected(config, update: bool) -> Path:
    """The expected file when --expected is not given: the config file's, else DEFAULT_EXPECTED (which
    --update creates, saying where)."""
    if "expected" in config.check:
        return Path(config.check["expected"])
    if update:
        where = f"check: writing the expected values to {DEFAULT_EXPECTED} (choose with --expected FILE)"
        print(where, file=sys.stderr)
    elif not DEFAULT_EXPECTED.is_file():
        raise ValueError(
            f"no expected file: run `flowblending-accel check --update --scenario NAME ...` once to write "
            f"{DEFAULT_EXPECTED}, or give --expected FILE (or `expected` under [check] in flowblending.toml "
            "or pyproject.toml's [tool.flowblending.check])."
        )
    return DEFAULT_EXPECTED


def measure_ratio(scenario, repeats: int) -> float:
    """Median speedup of the scenario over its baseline schedule, measured interleaved in one process."""
    from ..bench.runner import Row, measure_rows, summarise

    target = scenario.build()
    rows = [
        Row("baseline", scenario.ratio_baseline),
        Row(scenario.name, scenario.schedule, scenario.stack),
    ]
    table = summarise(measure_rows(target, rows, repeats), lambda *_: None)
    return table[1]["speedup"]["median"]


def run(args: argparse.Namespace) -> int:
    from ..check.gate import read_expected
    from ..core.distributed import joined
    from ..targets.config import find_config

    config = find_config(args.config)
    if args.expected is None:
        args.expected = _default_expected(config, args.update)
    if not args.update and not args.expected.is_file():
        raise ValueError(
            f"--expected {args.expected}: no such file; create it with `--update --scenario NAME ...`."
        )
    expectations = read_expected(args.expected)
    scenarios = _scenarios(args, expectations, config)  # every target checked before any is built
    with joined() as ranks:  # under torchrun every rank runs the scenarios (a cp stack splits them)
        return _gate(args, scenarios, expectations, ranks)


def _gate(args, scenarios, expectations, ranks) -> int:
    """Measure every scenario, compare with (or, with --update, rewrite) the expected file, report."""
    from ..check.gate import compare, exit_code, read_expected, render_csv, updated_rows
    from ..check.report import benchmark_json, summary_markdown
    from ..check.scenarios import RANK_METRICS, ranks_agree, run_scenario
    from ..support.files import write_atomic
    from ..support.threads import use_threads

    measured = {}
    use_threads(args.threads)
    for scenario in scenarios:
        measured[scenario.name] = run_scenario(scenario, keep=RANK_METRICS if ranks.active else ())
        if args.ratio and scenario.ratio_baseline:
            measured[scenario.name][f"speedup.vs_{scenario.ratio_baseline.as_written}"] = measure_ratio(
                scenario, args.repeats
            )
    if ranks.active:
        measured = ranks_agree(measured, ranks, scenarios)
        if not ranks.is_main:
            return 0
    others = []  # rows --metrics leaves out: kept as they are by --update
    if args.metrics:
        wanted = tuple(args.metrics)
        measured = {
            name: {m: v for m, v in values.items() if m.startswith(wanted)}
            for name, values in measured.items()
        }
        others = [e for e in expectations if not e.metric.startswith(wanted)]
        expectations = [e for e in expectations if e.metric.startswith(wanted)]
    if args.update:
        rows = others + updated_rows(expectations, measured)
        write_atomic(args.expected, render_csv(rows).encode())
        expectations = [e for e in read_expected(args.expected) if e not in others]
    verdicts = compare(expectations, measured)
    summary = summary_markdown(verdicts, args.command_line)
    if args.summary:
        write_atomic(args.summary, summary.encode())
    if args.benchmark_json:
        write_atomic(args.benchmark_json, (json.dumps(benchmark_json(verdicts), indent=2) + "\n").encode())
    print(summary)
    for verdict in verdicts:
        if verdict.status != "ok":
            print(verdict.message, file=sys.stderr)
    return exit_code(verdicts)
