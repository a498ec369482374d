"""Compare measured metrics with an expected file; fail on regressions *and* on unexplained improvements.

The expected file is CSV, one row per ``scenario,metric,expected,margin`` (``#`` starts a comment), like
PyTorch's compile-time gate. A metric outside its margin fails: in its bad direction as a *regression*, in its
good direction as an *improvement* (the baseline must be updated in the same pull request, so a win is
reviewed and then protected), and for direction-less metrics (the routing-trace hash) as a *change*.
Speedup ratios are floors: only falling below ``expected - margin`` fails.

``--update`` rewrites the file: values are rounded, and a value moves only when it is beyond a third of its
margin from the expected one, so a re-run on noise does not churn the diff.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOWER = ("calls.large", "flops.", "recompiles_after_warmup", "graph_breaks_after_warmup")
HIGHER = ("attention_skipped.", "segment_starts_full_compute")
FLOORS = ("speedup.",)

EXIT_OK, EXIT_REGRESSION, EXIT_USAGE, EXIT_OUTDATED = 0, 1, 2, 3


def direction(metric: str) -> str:
    if metric.startswith(FLOORS):
        return "floor"
    if metric.startswith(LOWER):
        return "lower"
    if metric.startswith(HIGHER):
        return "higher"
    return "exact"


@dataclass
class Expectation:
    scenario: str
    metric: str
    expected: Any
    margin: float


@dataclass
class Verdict:
    scenario: str
    metric: str
    expected: Any
    actual: Any
    margin: float
    status: str  # ok, regression, improvement, changed, missing, new

    @property
    def message(self) -> str:
        what = {
            "regression": "REGRESSION",
            "improvement": "IMPROVEMENT (update the expected file)",
            "changed": "CHANGED",
            "missing": "MISSING (metric no longer produced)",
            "new": "NEW (no expectation yet; run with --update)",
        }.get(self.status, "ok")
        return (
            f"{self.scenario} {self.metric}: expected {self.expected} ± {self.margin}, "
            f"got {self.actual} — {what}"
        )


def read_expected(path: Path) -> list[Expectation]:
    if not path.exists():
        return []
    rows = [
        line for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    expectations = []
    for row in csv.DictReader(rows):
        try:
            expectations.append(
                Expectation(row["scenario"], row["metric"], _parse(row["expected"]), float(row["margin"]))
            )
        except (KeyError, ValueError) as error:
            raise ValueError(
                f"{path}: bad row {row}: {error}; columns are scenario,metric,expected,margin."
            ) from error
    return expectations


def _parse(value: str) -> Any:
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number


def judge(expected: Any, actual: Any, margin: float, metric: str) -> str:
    if isinstance(expected, str) or isinstance(actual, str):
        return "ok" if str(expected) == str(actual) else "changed"
    delta = actual - expected
    if abs(delta) <= margin + 1e-12:
        return "ok"
    kind = direction(metric)
    if kind == "floor":
        return "regression" if delta < 0 else "ok"
    if kind == "exact":
        return "changed"
    worse = delta > 0 if kind == "lower" else delta < 0
    return "regression" if worse else "improvement"


def compare(expectations: list[Expectation], measured: dict[str, dict[str, Any]]) -> list[Verdict]:
    verdicts, known = [], set()
    for e in expectations:
        if e.scenario not in measured:
            continue
        known.add((e.scenario, e.metric))
        actual = measured[e.scenario].get(e.metric)
        status = "missing" if actual is None else judge(e.expected, actual, e.margin, e.metric)
        verdicts.append(Verdict(e.scenario, e.metric, e.expected, actual, e.margin, status))
    for scenario, metrics in measured.items():
        for metric, actual in metrics.items():
            if (scenario, metric) not in known:
                verdicts.append(
                    Verdict(scenario, metric, None, actual, default_margin(metric, actual), "new")
                )
    return verdicts


def exit_code(verdicts: list[Verdict]) -> int:
    statuses = {v.status for v in verdicts}
    if statuses & {"regression", "missing"}:
        return EXIT_REGRESSION
    if statuses & {"improvement", "changed", "new"}:
        return EXIT_OUTDATED
    return EXIT_OK


def default_margin(metric: str, value: Any) -> float:
    if isinstance(value, str | int):
        return 0.0
    if metric.startswith(FLOORS):
        return round(0.1 * abs(value), 3)
    return 0.02


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return 0.0 if value == 0 else round(value, 3 - int(math.floor(math.log10(abs(value)))))
    return value


def updated_rows(expectations: list[Expectation], measured: dict[str, dict[str, Any]]) -> list[Expectation]:
    """The new expected file: keep values within a third of their margin, replace the rest, add new ones."""
    rows, seen = [], set()
    for e in expectations:
        seen.add((e.scenario, e.metric))
        actual = measured.get(e.scenario, {}).get(e.metric)
        if e.scenario in measured and actual is None:
            continue  # the metric is gone
        keep = (
            actual is None
            or (
                not isinstance(actual, str)
                and not isinstance(e.expected, str)
                and abs(actual - e.expected) <= e.margin / 3
            )
            or actual == e.expected
        )
        rows.append(e if keep else Expectation(e.scenario, e.metric, _rounded(actual), e.margin))
    for scenario, metrics in measured.items():
        for metric, actual in metrics.items():
            if (scenario, metric) not in seen:
                rows.append(Expectation(scenario, metric, _rounded(actual), default_margin(metric, actual)))
    return rows


def render_csv(rows: list[Expectation]) -> str:
    stream = io.StringIO()
    stream.write(
        "# flowblending-accel check: expected values (scenario,metric,expected,margin); see `check --help`\n"
    )
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(["scenario", "metric", "expected", "margin"])
    for row in rows:
        writer.writerow([row.scenario, row.metric, row.expected, row.margin])
    return stream.getvalue()
