"""Markdown for an analysis (the divergence per step, which measure predicts the loss) and for a calibration
(the schedule found, the candidates verified, and the held-out comparison)."""

from __future__ import annotations

from typing import Any

from ..core.schedule import Schedule


def _ci(entry: dict | None, digits: int = 3) -> str:
    if not entry:
        return "—"
    return f"{entry['mean']:.{digits}f} [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"


def _scores(scores: dict[str, float] | None) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, value in scores.items()) if scores else "—"


def _held_out_table(rows: dict[str, dict]) -> list[str]:
    first = next(row for name, row in rows.items() if name != "LLL")
    scores, sets = list(first["scores"]), list(first["sets"])
    extras = list(rows["LLL"]["extras"])
    header = [
        "row",
        "schedule",
        "FLOPs vs LLL",
        *[f"{name} vs LLL" for name in scores],
        *extras,
        *[f"{name} vs LLL" for name in sets],
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        cells = [name, row["schedule"], f"{row['flops_vs_lll']:.3f}"]
        cells += [_ci(row["scores"].get(score)) for score in scores]
        cells += [_ci(row["extras"].get(extra)) for extra in extras]
        cells += [_set(row["sets"].get(score)) for score in sets]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _set(entry: dict | None) -> str:
    return (
        "—" if not entry else f"{entry['value']:.2f} (n = {entry['samples']} vs {entry['reference_samples']})"
    )


def cost_lines(document: dict[str, Any]) -> list[str]:
    """What the run cost against its plan, and, at a proxy size, whether the pick held at full size."""
    lines = []
    cost = document.get("run")
    if cost:
        estimate = cost["estimated_seconds"]
        lines.append(
            f"- cost: {cost['plan']}; {cost['seconds']:.0f} s in all"
            + (f" (estimated after the first call: at most {estimate:.0f} s)" if estimate else "")
            + (f"; {cost['threads']}" if cost.get("threads") else "")
        )
    proxy = document.get("proxy") or (
        {"proxy_size": document["proxy_size"]} if document.get("proxy_size") else None
    )
    if proxy:
        size = "x".join(str(v) for v in proxy["proxy_size"].values())
        if "held" in proxy:
            verdict = "**held**" if proxy["held"] else "**did not hold**"
            lines.append(
                f"- fitted at the proxy size {size}; validated at full size on the held-out prompts: the "
                f"pick {verdict} ({proxy['why']})"
            )
        else:
            lines.append(f"- fitted at the proxy size {size}")
    return lines


def _sigma_lines(result: dict[str, Any]) -> list[str]:
    if not result.get("sigma_schedule"):  # an adaptive schedule: its boundary is each sample's own
        return []
    return [
        f"- on the sigma axis: `{result['sigma_schedule']}` — carry it to another scheduler, shift or step "
        "count with `flowblending-accel plan --calibration calibration.json --scheduler S --shift X --steps "
        "N`, which also says when a recalibration is advisable"
    ]


def calibration_markdown(document: dict[str, Any]) -> str:
    result, held = document["calibration"], document["held_out"]
    lines = [
        "# Calibrated FlowBlending schedule",
        "",
        f"- command: `{document['command']}`",
        f"- result: **{result['schedule']}** — {result['message']}",
        *[
            f"- note: {note} (the scorers did not see a loss; look at the outputs)"
            for note in Schedule.parse(result["schedule"]).advice()
        ],
        f"- predicted FLOPs vs large-only: {result['flop_ratio']:.3f} "
        f"({result['flops_fewer_than_large_only']:.1%} fewer);"
        f" proposals from: {result['measure']}; "
        f"calibration scores {_scores(result['quality'])} vs the reference "
        f"schedule's {_scores(result['reference_quality'])}",
        *_sigma_lines(result),
        *cost_lines(document),
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
    fit = document.get("fit", {})
    lines += [
        "",
        f"Fit set (the calibration saw only these): {len(fit.get('prompts', []))} prompts x "
        f"{len(fit.get('seeds', []))} seeds (seeds {fit.get('seeds')}).",
        f"Held-out set (never seen by the calibration): {len(held['prompts'])} other prompts x "
        f"{len(held['seeds'])} other seeds (seeds {held['seeds']}); every score against the large-only "
        "output "
        "of the same noise.",
        "",
        *_held_out_table(held["rows"]),
    ]
    lines += [
        "",
        "95 % intervals (normal for means, Wilson for accuracies); Fréchet distances with their sample "
        "counts.",
        "",
        "![divergence](divergence.png)",
        "",
    ]
    return "\n".join(lines)


def analysis_markdown(document: dict[str, Any]) -> str:
    curve, fit = document["curve"], document["fit"]
    measures = list(curve["measures"])
    lines = [
        "# Divergence between the two models along the large-only trajectory",
        "",
        f"- command: `{document['command']}`",
        f"- target: {document['target']}",
        f"- {curve['samples']} samples: {len(fit['prompts'])} prompts x {len(fit['seeds'])} seeds; "
        "mean ± standard deviation per solver step (lower: the small model agrees more)",
        *cost_lines(document),
        "",
        "| step | sigma | " + " | ".join(measures) + " |",
        "|---|---|" + "---|" * len(measures),
    ]
    for step, sigma in enumerate(curve["sigmas"]):
        cells = [
            f"{curve['measures'][m]['mean'][step]:.4f} ± {curve['measures'][m]['std'][step]:.4f}"
            for m in measures
        ]
        lines.append(f"| {step} | {sigma:.3f} | " + " | ".join(cells) + " |")
    evidence = document.get("evidence")
    if evidence:
        lines += [
            "",
            f"Which measure predicts the quality lost with the small model on each window of "
            f"{evidence['window']} steps (Spearman's rho, per score; higher: a better proxy):",
            "",
            "| score | " + " | ".join(measures) + " |",
            "|---|" + "---|" * len(measures),
        ]
        for score, rhos in evidence["correlations"].items():
            lines.append(
                f"| {score} | " + " | ".join(f"{rhos.get(m, float('nan')):.2f}" for m in measures) + " |"
            )
    lines += ["", "![divergence](divergence.png)", ""]
    return "\n".join(lines)
