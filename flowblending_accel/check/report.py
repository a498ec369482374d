"""The gate's outputs: a markdown summary and github-action-benchmark entries."""

from __future__ import annotations

from .gate import Verdict, direction

_ICON = {
    "ok": "ok",
    "regression": "REGRESSION",
    "improvement": "improvement: update",
    "changed": "changed",
    "missing": "missing",
    "new": "new: update",
}


def summary_markdown(verdicts: list[Verdict], command: str) -> str:
    failing = [v for v in verdicts if v.status != "ok"]
    lines = [
        "# flowblending-accel check",
        "",
        f"`{command}` — {len(verdicts) - len(failing)} of {len(verdicts)} metrics within their margins.",
        "",
        "| scenario | metric | expected | actual | margin | status |",
        "|---|---|---|---|---|---|",
    ]
    for v in sorted(verdicts, key=lambda v: (v.status == "ok", v.scenario, v.metric)):
        lines.append(
            f"| {v.scenario} | {v.metric} | {v.expected} | {v.actual} | {v.margin} | {_ICON[v.status]} |"
        )
    return "\n".join(lines) + "\n"


def benchmark_json(verdicts: list[Verdict]) -> list[dict]:
    """customSmallerIsBetter-style entries (higher-is-better metrics are negated so one file serves both)."""
    entries = []
    for v in verdicts:
        if isinstance(v.actual, int | float) and not isinstance(v.actual, bool):
            sign = -1 if direction(v.metric) in ("higher", "floor") else 1
            entries.append(
                {
                    "name": f"{v.scenario} {v.metric}" + (" (negated)" if sign < 0 else ""),
                    "unit": "count" if isinstance(v.actual, int) else "value",
                    "value": sign * v.actual,
                }
            )
    return entries
