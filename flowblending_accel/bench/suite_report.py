"""The suite's files: suite.json (every section, as measured), suite.md (the tables a person reads) and
suite.png (the Wan stack's speedups against their ideals); rewritten atomically after every section."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..support.files import write_atomic
from .report import READING, counter_lines, plot, table_lines

SCHEMA = "flowblending-accel/suite/v1"


def write_suite(folder: Path, sections: dict, context: dict[str, Any]) -> None:
    document = {
        "schema": SCHEMA,
        "context": context,
        "sections": {name: asdict(section) for name, section in sections.items()},
    }
    write_atomic(folder / "suite.json", (json.dumps(document, indent=2, default=str) + "\n").encode())
    write_atomic(folder / "suite.md", suite_markdown(document).encode())
    wan = sections["wan"]
    if wan.status == "done":
        write_atomic(folder / "suite.png", plot(wan.result["rows"]))


def _status(section: dict[str, Any]) -> str:
    line = (
        f"{section['status']}, {section['seconds']} s"
        if section["seconds"] is not None
        else section["status"]
    )
    return line + (f" — {section['reason']}" if section["reason"] else "")


def suite_markdown(document: dict[str, Any]) -> str:
    context, sections = document["context"], document["sections"]
    environment = sections["environment"]["result"]
    lines = [
        f"# FlowBlending GPU evidence suite ({context['suite']})",
        "",
        f"- device: {environment.get('device')}; compute capability {environment.get('compute_capability')}, "
        f"{environment.get('memory_gib')} GiB, driver {environment.get('driver')}, CUDA runtime "
        f"{environment.get('cuda_runtime')}",
        f"- versions: {environment.get('versions')}",
        f"- command: `{context['command']}`; started {context['started']}",
        f"- sizes: {context['sizes']}",
        "",
    ]
    if context["suite"] != "gpu":
        lines += [
            "**Dry run: tiny random models on this machine's CPU. It checks that every section runs and "
            "writes this layout; its numbers are not performance figures.**",
            "",
        ]
    for name, render in RENDERERS.items():
        section = sections[name]
        lines += [f"## {TITLES[name]}", "", f"Status: {_status(section)}", ""]
        if section["status"] == "done":
            lines += render(section["result"]) + [""]
    return "\n".join(lines) + "\n"


def _overhead(result: dict[str, Any]) -> list[str]:
    pipeline, isolated = result["pipeline"], result["isolated"]
    overhead = pipeline["overhead_per_call_seconds"]
    router, hook = isolated["router"], isolated["pass_through_hook"]
    return [
        f"{result['note']}; {pipeline['target']}; {pipeline['calls_per_run']} calls a run, "
        f"{pipeline['repeats']} interleaved pairs; outputs bit-identical: {pipeline['bit_identical']}.",
        "",
        "| measure | median | IQR |",
        "|---|---|---|",
        f"| overhead per call in the pipeline | {overhead['median'] * 1e6:.1f} µs | "
        f"{overhead['q1'] * 1e6:.1f} .. {overhead['q3'] * 1e6:.1f} µs |",
        f"| an unwrapped call | {pipeline['call_seconds_unwrapped'] * 1e6:.0f} µs | |",
        f"| router alone (null denoiser) | {router['median'] * 1e6:.1f} µs | "
        f"{router['q1'] * 1e6:.1f} .. {router['q3'] * 1e6:.1f} µs |",
        f"| a do-nothing diffusers hook | {hook['median'] * 1e6:.1f} µs | "
        f"{hook['q1'] * 1e6:.1f} .. {hook['q3'] * 1e6:.1f} µs |",
    ]


def _bench_table(result: dict[str, Any]) -> list[str]:
    lines = [result.get("target", ""), "", *table_lines(result["rows"])]
    for skipped in result.get("skipped_rows", []):
        lines.append(f"| {skipped['row']} | skipped: {skipped['reason']} | | | | | | | | |")
    return lines + counter_lines(result["rows"])


def _headline(name: str, headline: dict[str, Any]) -> str:
    return (
        f"{name}: {headline['speedup']:.3f}x measured, {headline['time_ideal']:.3f}x time-ideal, efficiency "
        f"{headline['efficiency']:.3f}; recompiles after warm-up {headline['recompiles_after_warmup']}."
    )


def _wan(result: dict[str, Any]) -> list[str]:
    return [
        *_bench_table(result),
        "",
        _headline("FlowBlending alone", result["flowblending"]),
        _headline(f"Full stack ({' '.join(result['full_stack']['stack'])})", result["full_stack"]),
        "",
        *READING,
        "",
        "![speedups](suite.png)",
    ]


def _individual(result: dict[str, Any]) -> list[str]:
    factors = ", ".join(
        f"{spec} {factor:.3f}x" for spec, factor in result["factor_over_flowblending"].items()
    )
    return [
        *table_lines(result["rows"]),
        "",
        f"Each accelerator alone over FlowBlending: {factors}. Product of the individual speedups "
        f"{result['product_of_individual_speedups']:.3f}x; stacked {result['stacked_speedup']:.3f}x; "
        f"stacked ÷ product {result['stacked_over_product']:.3f}.",
    ]


def _ltx(result: dict[str, Any]) -> list[str]:
    return [*_bench_table(result), "", _headline("FlowBlending", result["flowblending"])]


def _memory(result: dict[str, Any]) -> list[str]:
    peak = result["peak_memory_bytes"]

    def gib(value):
        return "not measured (CPU)" if value is None else f"{value / 2**30:.2f} GiB"

    return [
        *table_lines(result["rows"]),
        "",
        f"Peak memory: {gib(peak['resident'])} with both models resident, {gib(peak['offload'])} with the "
        f"inactive model offloaded; offload runs at {result['offload_speed_vs_resident']:.3f}x the resident "
        f"speed; {result['offload_counters']}.",
    ]


def _environment(result: dict[str, Any]) -> list[str]:
    return [f"Measured on {result.get('device')}."]


TITLES = {
    "environment": "Environment",
    "router_overhead": "Router overhead per denoiser call",
    "wan": "Wan pair: FlowBlending and the cumulative stack",
    "wan_individual": "Each accelerator alone (stacked ÷ product of individual speedups)",
    "ltx": "LTX-Video pair",
    "memory": "Peak memory: both resident vs offload with prefetch",
}
RENDERERS = {
    "environment": _environment,
    "router_overhead": _overhead,
    "wan": _wan,
    "wan_individual": _individual,
    "ltx": _ltx,
    "memory": _memory,
}
