"""Bench outputs: our JSON, github-action-benchmark JSON (customSmallerIsBetter / customBiggerIsBetter),
a markdown table and a plot of speedups against their ideals. Every file is written atomically."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..metrics.quality import psnr, ssim
from ..support.files import write_atomic
from .ranks import rank_lines

SCHEMA = "flowblending-accel/bench/v2"  # v2: flop_ratio renamed flop_reduction (baseline / row)


def output_quality(output: Any, reference: Any) -> dict[str, float] | None:
    """Mean PSNR / SSIM of a row's output against the baseline's same-seed output (frames in [0, 1])."""
    if output is None or reference is None:
        return None
    a, b = torch.as_tensor(np.asarray(output)).float(), torch.as_tensor(np.asarray(reference)).float()
    if a.dim() == 4:  # images (B, H, W, C): one frame each
        a, b = a[:, None], b[:, None]
    return {
        "psnr_db": float(psnr(a, b, layout="BFHWC").mean()),
        "ssim": float(ssim(a, b, layout="BFHWC").mean()),
    }


def action_benchmark(table: list[dict[str, Any]], device: str) -> tuple[list[dict], list[dict]]:
    """(smaller-is-better, bigger-is-better) entries for github-action-benchmark's custom tools."""
    smaller, bigger = [], []
    for row in table:
        s, x = row["seconds"], row["speedup"]
        smaller.append(
            {
                "name": f"{row['label']} wall time",
                "unit": "s",
                "value": round(s["median"], 6),
                "range": f"{s['q1']:.6f}..{s['q3']:.6f}",
                "extra": device,
            }
        )
        bigger.append(
            {
                "name": f"{row['label']} speedup vs baseline",
                "unit": "x",
                "value": round(x["median"], 4),
                "range": f"{x['q1']:.4f}..{x['q3']:.4f}",
                "extra": device,
            }
        )
    return smaller, bigger


def _fmt_mem(value: int | None) -> str:
    return "—" if value is None else f"{value / 2**30:.2f} GiB"


def _counter(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, int | float) else str(value)


def table_lines(table: list[dict[str, Any]]) -> list[str]:
    """The rows as a markdown table: time, speedup, ideal, efficiency, FLOPs, calls, memory, recompiles,
    quality."""
    lines = [
        "| row | wall s (median [IQR]) | speedup vs baseline | time-ideal | efficiency | FLOPs vs baseline |"
        " calls L / S | peak memory | recompiles | PSNR / SSIM vs baseline |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        s, x, q = row["seconds"], row["speedup"], row["quality"]
        flop = f"{1 / row['flop_reduction']:.3f}" if row["flop_reduction"] else "—"
        quality = f"{q['psnr_db']:.2f} dB / {q['ssim']:.4f}" if q else "—"
        lines.append(
            f"| {row['label']} | {s['median']:.4f} [{s['q1']:.4f}, {s['q3']:.4f}] | {x['median']:.3f} "
            f"[{x['q1']:.3f}, {x['q3']:.3f}] | {row['ideal_speedup']:.3f} | {row['efficiency']:.3f} | "
            f"{flop} | "
            f"{row['calls'].get('large', 0)} / {row['calls'].get('small', 0)} | "
            f"{_fmt_mem(row['peak_memory_bytes'])} | "
            f"{row['recompiles_after_warmup']} | {quality} |"
        )
    return lines


def counter_lines(table: list[dict[str, Any]]) -> list[str]:
    """One line per row with accelerator counters (cache hits, graphs, switches, quantized bytes)."""
    counters = [
        f"- {row['label']}: "
        + "; ".join(
            f"{kind} " + ", ".join(f"{k} {_counter(v)}" for k, v in values.items())
            for kind, values in row["counters"].items()
        )
        for row in table
        if row.get("counters")
    ]
    if not counters:
        return []
    return [
        "",
        "Accelerator counters (totals over the row's runs, warm-up included, unless they say per run; "
        "attention: the FLOP pass; exposed_switch_seconds: the wait for a prefetched model):",
        *counters,
    ]


READING = [
    "Speedup: median over rounds of baseline time / row time in the same round. Time-ideal: the speedup the",
    "row's denoiser calls would give at the per-call times measured for each model alone (time outside the",
    "denoiser, e.g. text encoding, VAE and scheduler, scaled by the step count); efficiency = achieved /",
    "time-ideal (cache hits make calls cheaper, so cached rows can exceed 1). "
    "FLOPs are counted per call with",
    "torch.utils.flop_counter in an eager pass, attention included; a FLOP ratio is not a speedup.",
]


def markdown(table: list[dict[str, Any]], context: dict[str, Any]) -> str:
    lines = [
        f"# FlowBlending stack benchmark: {context['target']}",
        "",
        f"- device: {context['device']}; versions: {context['versions']}",
        f"- command: `{context['command']}`",
        f"- {context['description']}; {context['repeats']} interleaved rounds after a warm-up round",
        "",
        *table_lines(table),
        *rank_lines(table),
        "",
        *READING,
        *counter_lines(table),
    ]
    if not any(row["peak_memory_bytes"] for row in table):
        lines += ["", "Peak memory is CUDA's max_memory_allocated; on a CPU run it is not measured (—)."]
    return "\n".join(lines) + "\n"


def plot(table: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [row["label"] for row in table]
    achieved = [row["speedup"]["median"] for row in table]
    errors = [
        [a - row["speedup"]["q1"] for a, row in zip(achieved, table, strict=True)],
        [row["speedup"]["q3"] - a for a, row in zip(achieved, table, strict=True)],
    ]
    flop = [row["flop_reduction"] or 0 for row in table]
    positions = np.arange(len(table))
    figure, axis = plt.subplots(figsize=(max(6, 1.4 * len(table)), 4))
    axis.bar(positions - 0.2, achieved, 0.4, yerr=errors, label="measured speedup (median, IQR)")
    axis.bar(positions + 0.2, flop, 0.4, alpha=0.5, label="baseline FLOPs / row FLOPs")
    axis.set_xticks(positions, labels, rotation=20, ha="right")
    axis.axhline(1.0, color="black", linewidth=0.8)
    axis.legend()
    axis.set_ylabel("x baseline")
    figure.tight_layout()
    stream = io.BytesIO()
    figure.savefig(stream, format="png", dpi=120)
    plt.close(figure)
    return stream.getvalue()


def write_bench(folder: Path, table, context) -> None:
    smaller, bigger = action_benchmark(table, context["device"])
    document = {"schema": SCHEMA, "context": context, "rows": table}
    write_atomic(folder / "bench.json", (json.dumps(document, indent=2, default=str) + "\n").encode())
    write_atomic(folder / "bench-smaller-is-better.json", (json.dumps(smaller, indent=2) + "\n").encode())
    write_atomic(folder / "bench-bigger-is-better.json", (json.dumps(bigger, indent=2) + "\n").encode())
    write_atomic(folder / "bench.md", markdown(table, context).encode())
    write_atomic(folder / "bench.png", plot(table))
