"""The "Performance" tables of docs/performance.md, rendered from the committed results (never typed by hand):
the CPU stack benchmark, the router overhead, and one table per GPU suite run under benchmarks/results/gpu/.

    python benchmarks/performance_table.py           # print the section
    python benchmarks/performance_table.py --write   # replace it in docs/performance.md (between its markers)

A test checks that docs/performance.md holds exactly what this renders.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "performance.md"
UP = "../"  # the page lies in docs/: its links to benchmarks/ climb one folder
START, END = "<!-- performance:start -->", "<!-- performance:end -->"


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _row(row: dict) -> str:
    x = row["speedup"]
    flops = f"{1 / row['flop_reduction']:.3f}" if row.get("flop_reduction") else "—"
    speedup = f"{x['median']:.2f} [{x['q1']:.2f}, {x['q3']:.2f}]" if x else "—"
    return (
        f"| {row['label']} | {speedup} | {_number(row['ideal_speedup'])} | "
        f"{_number(row['efficiency'])} | {flops} | {row['recompiles_after_warmup']} |"
    )


HEADER = [
    "| row | speedup (median [IQR]) | time-ideal | efficiency | FLOPs vs baseline | recompiles after warm-up "
    "|",
    "|---|---|---|---|---|---|",
]


def _threads(threads) -> str:
    """Older results record a thread count, newer ones how the threads were chosen."""
    return f"{threads} threads" if isinstance(threads, int) else threads


def cpu_section() -> list[str]:
    bench = _load(RESULTS / "bench-embedded-cpu" / "bench.json")
    context = bench["context"]
    overhead = _load(RESULTS / "router_overhead_cpu.json")
    isolated = overhead["isolated_router_cost_per_call_seconds"]
    per_call = overhead["overhead_per_call_seconds"]
    return [
        "### CPU (measured)",
        "",
        f"Embedded pair, {context['device']}, {_threads(context['threads'])}, {context['repeats']} "
        "interleaved "
        f"rounds; `{context['command']}` ([bench.md]({UP}benchmarks/results/bench-embedded-cpu/bench.md)):",
        "",
        *HEADER,
        *[_row(row) for row in bench["rows"][1:]],
        "",
        f"Router overhead ({overhead['device']}; `{overhead['command']}`, "
        f"[report]({UP}benchmarks/results/router_overhead_cpu.md)): "
        f"{isolated['router']['median'] * 1e6:.0f} µs per denoiser call in isolation (a do-nothing diffusers "
        f"hook: {isolated['pass_through_hook']['median'] * 1e6:.0f} µs); in the tiny pipeline "
        f"{per_call['median'] * 1e6:.0f} µs per call (IQR {per_call['q1'] * 1e6:.0f} .. "
        f"{per_call['q3'] * 1e6:.0f}) on calls of {overhead['call_seconds_unwrapped'] * 1e3:.1f} ms, "
        f"{overhead['overhead_fraction_of_run']:.1%} of the run, the run-start work included; outputs "
        f"bit-identical: {overhead['bit_identical']}.",
    ]


def gpu_section() -> list[str]:
    runs = sorted((RESULTS / "gpu").glob("*/suite.json")) if (RESULTS / "gpu").is_dir() else []
    lines = ["### GPU"]
    if not runs:
        return lines + [
            "",
            "**Not measured yet**: no GPU has been available to this project since the suite was split into "
            "parts. It is rehearsed in CI on tiny presets; on a CUDA machine it runs as five short calls, "
            f"`bash benchmarks/gpu/run.sh smoke` first (see [benchmarks/gpu]({UP}benchmarks/gpu/README.md)).",
        ]
    for path in runs:
        for device in _load(path)["devices"]:
            wan, stack = device["sections"]["wan"], device["sections"]["compile"]
            suite = f"{UP}{path.parent.relative_to(ROOT)}/suite.md"
            lines += ["", f"{device['device']} ([suite.md]({suite})):", ""]
            rows = [row for row in wan["rows"] + stack["rows"] if row["label"] != "baseline (large only)"]
            if not rows:
                lines.append(f"Wan section: {wan['status']}.")
                continue
            lines += [*HEADER, *[_row(row) for row in rows]]
    return lines


def render() -> str:
    return "\n".join([START, "", *cpu_section(), "", *gpu_section(), "", END])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", action="store_true", help="replace the section in docs/performance.md")
    args = parser.parse_args()
    section = render()
    if not args.write:
        print(section)
        return
    text = PAGE.read_text()
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    PAGE.write_text(before + section + after)


if __name__ == "__main__":
    main()
