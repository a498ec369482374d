"""``flowblending-accel bench --suite render DIR...``: any set of part files into suite.json (the summary),
suite.md (what a person reads) and suite.png (the Wan stack's speedups), written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...support.files import write_atomic
from ...support.memory import gib
from ..report import plot
from .journal import read_lines
from .plan import Suite
from .summary import CHAIN, summarise_suite


def _number(value: float | None, form: str = "{:.3f}") -> str:
    return "—" if value is None else form.format(value)


def _spread(value: dict[str, float] | None, form: str = "{:.3f}") -> str:
    if value is None:
        return "—"
    return f"{form.format(value['median'])} [{form.format(value['q1'])}, {form.format(value['q3'])}]"


COLUMNS = (
    "row",
    "rounds / planned",
    "wall s (median [IQR])",
    "speedup vs baseline",
    "time-ideal",
    "efficiency",
    "FLOPs vs baseline",
    "calls L / S",
    "peak GPU memory",
    "peak host memory",
    "recompiles after warm-up",
)
TABLE = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]


def _row_line(row: dict[str, Any]) -> str:
    cells = [
        row["label"],
        f"{row['samples']} / {row['repeats']}",
        _spread(row["seconds"], "{:.4f}"),
        _spread(row["speedup"]),
        _number(row["ideal_speedup"]),
        _number(row["efficiency"]),
        _number(1 / row["flop_reduction"]) if row["flop_reduction"] else "—",
        f"{row['calls'].get('large', 0)} / {row['calls'].get('small', 0)}",
        gib(row["peak_memory_bytes"]),
        gib(row["peak_host_bytes"]),
        str(row["recompiles_after_warmup"]),
    ]
    return "| " + " | ".join(cells) + " |"


def _rows_lines(section: dict[str, Any]) -> list[str]:
    lines = [*TABLE, *map(_row_line, section["rows"])]
    blank = " |" * (len(COLUMNS) - 2)
    lines += [f"| {m['label']} | not measured — {m['reason']} |{blank}" for m in section["not_measured"]]
    short = [row for row in section["rows"] if row.get("short_of_rounds")]
    if short:
        lines += [""] + [
            f"- {row['label']}: {row['samples']} of {row['repeats']} rounds — {row['short_of_rounds']}"
            for row in short
        ]
    bases = sorted({row["flops_basis"] for row in section["rows"]})
    if bases:
        lines += ["", "FLOPs: " + "; ".join(bases) + "."]
    return lines


def _pairs_lines(section: dict[str, Any]) -> list[str]:
    pairs, lines = section.get("pairs"), []
    if pairs:
        overhead = pairs["overhead_per_call_seconds"]
        lines += [
            f"{pairs['repeats']} interleaved pairs of {pairs['calls_per_run']} denoiser calls; outputs "
            f"bit-identical: **{pairs['bit_identical']}**.",
            "",
            "| measure | median | IQR |",
            "|---|---|---|",
            f"| router overhead per call | {overhead['median'] * 1e6:.1f} µs | "
            f"{overhead['q1'] * 1e6:.1f} .. {overhead['q3'] * 1e6:.1f} µs |",
            f"| an unwrapped call | {pairs['call_seconds_unwrapped'] * 1e3:.2f} ms | |",
            f"| overhead share of a run | {pairs['overhead_fraction_of_run'] * 100:.3f} % | |",
        ]
    if "not_measured" in section:
        done = pairs["repeats"] if pairs else 0
        lines[:0] = [f"{done} of {section['planned']} planned pairs: {section['not_measured']}.", ""]
    for name, value in (section.get("isolated") or {}).items():
        lines.append(
            f"| {name.replace('_', ' ')} (null denoiser, CPU time) | {value['median'] * 1e6:.1f} µs | |"
        )
    return lines or ["No pair was measured."]


def _headline_lines(found: dict[str, Any]) -> list[str]:
    lines = []
    if "flowblending" in found:
        f = found["flowblending"]
        flops = _number(1 / f["flop_reduction"]) if f["flop_reduction"] else "—"
        lines.append(
            f"- FlowBlending L40-S40-L20 on Wan: {_spread(f['speedup'])}x measured, "
            f"{_number(f['ideal_speedup'])}x time-ideal, efficiency **{_number(f['efficiency'])}** "
            f"(goal ≥ 0.97); FLOPs {flops} of large-only."
        )
    if "cumulative_stack" in found:
        c = found["cumulative_stack"]
        members = " + ".join([f"FlowBlending {c['schedule']}", *c["stack"]])
        lines.append(f"- Cumulative stack ({members}): **{c['median']:.2f}x** (goal ≥ 8x).")
    if "stacked_over_product" in found:
        s = found["stacked_over_product"]
        lines.append(
            f"- Stacked ÷ product of the individual speedups: {s['stacked']:.2f} / "
            f"{s['product_of_individual']:.2f} = **{s['ratio']:.3f}**"
            + ("" if s["complete"] else " (not every member was measured alone)")
        )
    if "recompiles_after_warmup" in found:
        lines.append(f"- Recompiles after warm-up, all rows: {found['recompiles_after_warmup']}.")
        lines.append(
            f"- Peak memory over all rows: {gib(found['peak_memory_bytes'])} GPU, "
            f"{gib(found['peak_host_bytes'])} host."
        )
    return lines or ["- Nothing measured yet."]


def _device_lines(device: dict[str, Any], suite: Suite) -> list[str]:
    setups = [s["setup"] for s in device["sections"].values() if s["setup"]]
    lines = [f"## {device['device']}", ""]
    if setups:
        details, versions = setups[-1]["details"], setups[-1]["versions"]
        lines += [f"- details: {details}", f"- versions: {versions}", ""]
    lines += [*_headline_lines(device["headlines"]), "", "| part | status | estimate s | wall s | calls |"]
    lines.append("|---|---|---|---|---|")
    for name, part in device["parts"].items():
        lines.append(
            f"| {name} | {part['status']} | {_number(part['estimate_seconds'], '{:.0f}')} | "
            f"{_number(part['measured_seconds'], '{:.0f}')} | {part['calls']} |"
        )
    for name, section in device["sections"].items():
        lines += ["", f"### {section['title']} (`{name}`, part {section['part']})", ""]
        lines += [f"{section['workload']}. Status: {section['status']}.", ""]
        lines += _rows_lines(section) if section["kind"] == "rows" else _pairs_lines(section)
    return lines


def suite_markdown(summary: dict[str, Any], suite: Suite, command: str) -> str:
    lines = [f"# FlowBlending GPU evidence suite ({suite.name})", "", f"Rendered by `{command}`.", ""]
    if suite.name != "gpu":
        lines += [
            "**Rehearsal: tiny random models on a CPU. It checks that every part runs and writes this "
            "layout; its numbers are not performance figures.**",
            "",
        ]
    lines += [
        "Speedup: median over rounds of baseline time / row time in the same run and round (one process). "
        "Time-ideal: the speedup the row's calls would give at the per-call times of each model alone; "
        "efficiency = achieved / time-ideal. FLOPs are counted, never called a speedup.",
        "",
    ]
    for device in summary["devices"] or [{"device": "no part file held a measured line"}]:
        lines += _device_lines(device, suite) if "sections" in device else [f"## {device['device']}"]
        lines.append("")
    return "\n".join(lines) + "\n"


def _plot_rows(device: dict[str, Any]) -> list[dict[str, Any]]:
    chain = [row for name in CHAIN for row in device["sections"][name]["rows"]]
    seen, rows = set(), []
    for row in chain:  # each part has its own baseline: the first one stands for all
        if row["label"] not in seen and row["speedup"]:
            seen.add(row["label"])
            rows.append(row)
    return rows


def render(paths: list[Path], output: Path, suite: Suite, command: str) -> dict[str, Any]:
    lines = list(read_lines(paths))
    summary = summarise_suite(suite, lines)
    output.mkdir(parents=True, exist_ok=True)
    write_atomic(output / "suite.json", (json.dumps(summary, indent=2, default=str) + "\n").encode())
    write_atomic(output / "suite.md", suite_markdown(summary, suite, command).encode())
    rows = next((found for device in summary["devices"] if (found := _plot_rows(device))), [])
    if rows:
        write_atomic(output / "suite.png", plot(rows))
    return summary
