"""The README's "Performance" tables, rendered from the committed results (never typed by hand):
the CPU stack benchmark, the router overhead, and one table per GPU suite run under benchmarks/results/gpu/.

    python benchmarks/performance_table.py           # print the section
    python benchmarks/performance_table.py --write   # replace it in README.md (between its markers)

A test checks that README.md holds exactly what this renders.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- performance:start -->", "<!-- performance:end -->"


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _row(row: dict) -> str:
    x = row["speedup"]
    flops = f"{1 / row['flop_reduction']:.3f}" if row.get("flop_reduction") else "—"
    return (
        f"| {row['label']} | {x['median']:.2f} [{x['q1']:.2f}, {x['q3']:.2f}] | {row['ideal_speedup']:.2f} | "
        f"{row['efficiency']:.2f} | {flops} | {row['recompiles_after_warmup']} |"
    )


HEADER = [
    "| row | speedup (median [IQR]) | time-ideal | efficiency | FLOPs vs baseline | recompiles after warm-up "
    "|",
    "|---|---|---|---|---|---|",
]


def cpu_section() -> list[str]:
    bench = _load(RESULTS / "bench-embedded-cpu" / "bench.json")
    context = bench["context"]
    overhead = _load(RESULTS / "router_overhead_cpu.json")
    isolated = overhead["isolated_router_cost_per_call_seconds"]
    per_call = overhead["overhead_per_call_seconds"]
    return [
        "### CPU (measured)",
        "",
        f"Embedded pair, {context['device']}, {context['threads']} threads, {context['repeats']} interleaved "
        f"rounds; `{context['command']}` ([bench.md](benchmarks/results/bench-embedded-cpu/bench.md)):",
        "",
        *HEADER,
        *[_row(row) for row in bench["rows"][1:]],
        "",
        f"Router overhead ({overhead['device']}; `{overhead['command']}`, "
        "[report](benchmarks/results/router_overhead_cpu.md)): "
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
            "**Not measured yet**: no GPU has been available to this project. The suite is ready and runs in "
            "CI as a CPU dry run; on a CUDA machine: `bash benchmarks/gpu/run.sh` (see "
            "[benchmarks/gpu](benchmarks/gpu/README.md)).",
        ]
    for path in runs:
        document = _load(path)
        environment = document["sections"]["environment"]["result"]
        wan = document["sections"]["wan"]
        lines += [
            "",
            f"{environment.get('device')}, `{document['context']['command']}` "
            f"([suite.md]({path.parent.relative_to(ROOT)}/suite.md)):",
            "",
        ]
        if wan["status"] != "done":
            lines.append(f"Wan section: {wan['status']} ({wan['reason']}).")
            continue
        lines += [*HEADER, *[_row(row) for row in wan["result"]["rows"][1:]]]
    return lines


def render() -> str:
    return "\n".join([START, "", *cpu_section(), "", *gpu_section(), "", END])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", action="store_true", help="replace the section in README.md")
    args = parser.parse_args()
    section = render()
    if not args.write:
        print(section)
        return
    readme = ROOT / "README.md"
    text = readme.read_text()
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    readme.write_text(before + section + after)


if __name__ == "__main__":
    main()
