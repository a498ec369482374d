"""Markdown for a calibration: the schedule found, the candidates verified, and the held-out comparison."""

from __future__ import annotations

from typing import Any


def _ci(entry: dict | None, digits: int = 3) -> str:
    if not entry:
        return "—"
    return f"{entry['mean']:.{digits}f} [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"


def _scores(scores: dict[str, float] | None) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, value in scores.items()) if scores else "—"


def calibration_markdown(document: dict[str, Any]) -> str:
    result, held = document["calibration"], document["held_out"]
    lines = [
        "# Calibrated FlowBlending schedule",
        "",
        f"- command: `{document['command']}`",
        f"- result: **{result['schedule']}** — {result['message']}",
        f"- predicted FLOPs vs large-only: {result['flop_ratio']:.3f} "
        f"({result['flops_fewer_than_large_only']:.1%} fewer);"
        f" proposals from: {result['measure']}; "
        f"calibration scores {_scores(result['quality'])} vs the reference "
        f"schedule's {_scores(result['reference_quality'])}",
        f"- on the sigma axis: `{result.get('sigma_schedule')}` — carry it to another scheduler, "
        "shift or step count with "
        "`flowblending-accel plan --calibration calibration.json --scheduler S --shift X --steps N`, "
        "which also says when a recalibration is advisable",
        "",
        "Candidates verified on the calibration set (scores vs large-only, higher is better):",
        "",
        "| schedule | small steps | proposed by | proxy cost | FLOPs vs LLL | scores |",
        "|---|---|---|---|---|---|",
    ]
    for c in sorted(result["candidates"], key=lambda c: (c["small_steps"], c["schedule"])):
        lines.append(
            f"| {c['schedule']} | {c['small_steps']} | {c['measure']} | {c['proxy_cost']:.4f} | "
            f"{c['flop_ratio']:.3f} | {_scores(c['quality'])} |"
        )
    lines += [
        "",
        f"Held-out evaluation: {len(held['prompts'])} prompts x "
        f"{len(held['seeds'])} seeds the calibration never saw.",
        "",
        "| row | schedule | FLOPs vs LLL | feature similarity vs LLL | PSNR vs LLL | SSIM vs LLL | "
        "digit accuracy | motion accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in held["rows"].items():
        lines.append(
            f"| {name} | {row['schedule']} | {row['flops_vs_lll']:.3f} | "
            f"{_ci(row['feature_similarity_vs_lll'])} | "
            f"{_ci(row['psnr_vs_lll'], 2)} | {_ci(row['ssim_vs_lll'])} | {_ci(row['digit_accuracy'])} | "
            f"{_ci(row['direction_accuracy'])} |"
        )
    lines += [
        "",
        "95 % intervals (normal for means, Wilson for accuracies).",
        "",
        "![divergence](divergence.png)",
        "",
    ]
    return "\n".join(lines)
