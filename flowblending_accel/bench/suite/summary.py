"""From part-file lines, however many calls and machines they came from, to one summary per device: each
planned row measured (median times, speedups paired with the baseline of the same run and round, FLOPs,
memory, recompiles) or marked not measured with the reason; each part's estimate beside its wall time; the
headline numbers.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from ..overhead import summarise_pairs
from ..runner import spread
from .plan import BASELINE, BLENDED, PROBE, Suite

SUMMARY_SCHEMA = "flowblending-accel/suite/v2"
CHAIN = ("wan", "compile")  # the sections of the cumulative stack, in order
UNKNOWN_DEVICE = "unknown device (no section started)"


def _by_device(lines: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Lines per device; a part runner's lines (no setup) go with the device of their file's sections."""
    device_of_part: dict[tuple[str, str], str] = {}
    for line in lines:
        if line.get("setup"):
            device_of_part.setdefault((line["_file"], line["part"]), line["setup"]["device"])
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        device = (line.get("setup") or {}).get("device") or device_of_part.get((line["_file"], line["part"]))
        grouped[device or UNKNOWN_DEVICE].append(line)
    return dict(sorted(grouped.items(), key=lambda item: item[0] == UNKNOWN_DEVICE))  # measured ones first


def _per_call(samples: list[dict[str, Any]], model: str) -> float | None:
    values = [
        s["model_seconds"].get(model, 0.0) / s["calls"][model] for s in samples if s["calls"].get(model)
    ]
    return statistics.median(values) if values else None


def _ideal(row: list[dict], baseline: list[dict], probe: list[dict]) -> float | None:
    """The speedup the row's calls would give at the per-call times of each model alone."""
    t_large, t_small = _per_call(baseline, "large"), _per_call(probe, "small")
    if t_large is None or t_small is None or not row:
        return None
    base_time = statistics.median(s["seconds"] for s in baseline)
    outside = base_time - baseline[-1]["calls"].get("large", 0) * t_large
    calls, steps = row[-1]["calls"], row[-1]["steps"]
    scale = steps / baseline[-1]["steps"] if baseline[-1]["steps"] else 1.0
    ideal_time = outside * scale + calls.get("large", 0) * t_large + calls.get("small", 0) * t_small
    return base_time / ideal_time


def _ratios(row: list[dict], baseline: list[dict]) -> list[float]:
    base = {(s["run"], s["round"]): s["seconds"] for s in baseline}
    return [base[(s["run"], s["round"])] / s["seconds"] for s in row if (s["run"], s["round"]) in base]


def _not_measured_reason(label: str | None, lines: list[dict[str, Any]], unsaid: str = "not run") -> str:
    """The latest line that says why ``label`` (or its whole section, or the pairs) was not (fully)
    measured; ``unsaid`` when none does."""
    for line in reversed(lines):
        if line["kind"] in ("skipped", "failed", "interrupted") and line.get("row") in (label, None):
            return f"{line['kind']}: {line['reason']}"
    return unsaid


def _row_summary(label: str, samples: list, baseline: list, probe: list, repeats: int) -> dict[str, Any]:
    last = samples[-1]
    ratios = _ratios(samples, baseline)
    ideal = _ideal(samples, baseline, probe)
    base_flops = baseline[-1]["flops"]["total"] if baseline else None
    speedup = spread(ratios) if ratios else None
    return {
        "label": label,
        "schedule": last["schedule"],
        "stack": last["stack"],
        "accelerators": last["accelerators"],
        "samples": len(samples),
        "repeats": repeats,
        "runs": sorted({s["run"] for s in samples}),
        "seconds": {**spread([s["seconds"] for s in samples]), "all": [s["seconds"] for s in samples]},
        "speedup": speedup,
        "ideal_speedup": ideal,
        "efficiency": speedup["median"] / ideal if speedup and ideal else None,
        "calls": last["calls"],
        "steps": last["steps"],
        "flops": last["flops"],
        "flops_basis": last["flops_basis"],
        "flop_reduction": base_flops / last["flops"]["total"]
        if base_flops and last["flops"]["total"]
        else None,
        "peak_memory_bytes": max((s["peak_cuda_bytes"] or 0 for s in samples), default=0) or None,
        "peak_host_bytes": max((s["peak_host_bytes"] or 0 for s in samples), default=0) or None,
        "recompiles_after_warmup": sum(s["recompiles"] for s in samples),
        "counters": last["counters"],
    }


def _section_status(lines: list[dict[str, Any]]) -> str:
    ends = [line for line in lines if line["kind"] in ("section_end", "failed", "interrupted")]
    skipped = [line for line in lines if line["kind"] == "skipped" and "run" not in line]
    if not ends:
        if skipped:  # the part runner did not start it (its lines name no section process)
            return f"skipped: {skipped[-1]['reason']}"
        return "cut short: no end recorded (stopped from outside)" if lines else "not run"
    finished = [line for line in ends if line["kind"] == "section_end"]
    if finished:
        done_runs = {line["run"] for line in finished}
        broken = [line for line in ends if line["kind"] != "section_end" and line.get("run") not in done_runs]
        status = finished[-1].get("status", "done")
        status = status if status == "done" else f"{status}: {finished[-1].get('reason', '')}".rstrip(": ")
        return status if not broken else f"{status}, and a later run {broken[-1]['kind']}"
    return f"{ends[-1]['kind']}: {ends[-1]['reason']}"


def _rows_section(section, lines: list[dict[str, Any]]) -> dict[str, Any]:
    samples: dict[str, list] = defaultdict(list)
    for line in lines:
        if line["kind"] == "sample":
            samples[line["row"]].append(line)
    baseline, probe = samples.get(BASELINE.label, []), samples.get(PROBE.label, [])
    rows, missing = [], []
    for row in section.rows:
        if samples.get(row.label):
            rows.append(_row_summary(row.label, samples[row.label], baseline, probe, section.repeats))
            if len(samples[row.label]) < section.repeats:  # dropped after some rounds: say why
                unsaid = "no line says why (the section was stopped from outside)"
                rows[-1]["short_of_rounds"] = _not_measured_reason(row.label, lines, unsaid)
        else:
            missing.append({"label": row.label, "reason": _not_measured_reason(row.label, lines)})
    return {"rows": rows, "not_measured": missing}


def _pairs_section(section, lines: list[dict[str, Any]]) -> dict[str, Any]:
    pairs = [line for line in lines if line["kind"] == "pair"]
    result: dict[str, Any] = {"pairs": summarise_pairs(pairs) if pairs else None, "planned": section.repeats}
    if len(pairs) < section.repeats and any("run" in line for line in lines):  # a section process ran
        result["not_measured"] = _not_measured_reason(None, lines)
    isolated = [line for line in lines if line["kind"] == "overhead"]
    if isolated:
        result["isolated"] = isolated[-1]["isolated"]
    return result


def _row(sections: dict, section: str, label: str) -> dict[str, Any] | None:
    found = sections.get(section, {}).get("rows", [])
    return next((row for row in found if row["label"] == label), None)


def headlines(suite: Suite, sections: dict[str, Any]) -> dict[str, Any]:
    """FlowBlending's efficiency, the cumulative stack, stacked ÷ product, recompiles, peak memory."""
    found: dict[str, Any] = {}
    blended = _row(sections, "wan", BLENDED.label)
    if blended and blended["speedup"]:
        found["flowblending"] = {
            key: blended[key] for key in ("speedup", "ideal_speedup", "efficiency", "flop_reduction")
        }
    chain = [row for name in CHAIN for row in sections.get(name, {}).get("rows", [])]
    full = [row for row in chain if row["label"] != BASELINE.label and "tensorrt" not in row["label"]]
    if full and full[-1]["speedup"]:
        found["cumulative_stack"] = {
            "row": full[-1]["label"],
            "schedule": full[-1]["schedule"],
            "stack": full[-1]["stack"],
            **full[-1]["speedup"],
        }
    alone = sections.get("individual", {}).get("rows", [])
    base_alone = _row(sections, "individual", BLENDED.label)
    members = [row for row in alone if row["label"] not in (BASELINE.label, BLENDED.label) and row["speedup"]]
    if "cumulative_stack" in found and base_alone and base_alone["speedup"] and members:
        factor = base_alone["speedup"]["median"]
        factors = {row["label"]: row["speedup"]["median"] / factor for row in members}
        product = factor * math.prod(factors.values())
        found["stacked_over_product"] = {
            "stacked": found["cumulative_stack"]["median"],
            "product_of_individual": product,
            "ratio": found["cumulative_stack"]["median"] / product,
            "factor_over_flowblending": factors,
            "complete": len(members) == len(alone) - 2
            and len(alone) == len(suite.section("individual").rows),
        }
    every = [row for section in sections.values() for row in section.get("rows", [])]
    if every:
        found["recompiles_after_warmup"] = sum(row["recompiles_after_warmup"] for row in every)
        found["peak_memory_bytes"] = max((row["peak_memory_bytes"] or 0 for row in every), default=0) or None
        found["peak_host_bytes"] = max((row["peak_host_bytes"] or 0 for row in every), default=0) or None
    return found


def _parts(suite: Suite, lines: list[dict[str, Any]]) -> dict[str, Any]:
    parts = {}
    for part in suite.parts:
        mine = [line for line in lines if line.get("part") == part.name]
        starts = [line for line in mine if line["kind"] == "part"]
        ends = [line for line in mine if line["kind"] == "part_end"]
        parts[part.name] = {
            "purpose": part.purpose,
            "estimate_seconds": starts[-1]["estimate_seconds"]["total"] if starts else None,
            "measured_seconds": ends[-1]["seconds"] if ends else None,
            "status": ends[-1]["status"] if ends else ("started, no end recorded" if starts else "not run"),
            "calls": len(starts),
        }
    return parts


def summarise_device(suite: Suite, device: str, lines: list[dict[str, Any]]) -> dict[str, Any]:
    sections = {}
    for part in suite.parts:
        for section in part.sections:
            mine = [line for line in lines if line.get("section") == section.name]
            body = _rows_section(section, mine) if section.kind == "rows" else _pairs_section(section, mine)
            setups = [line["setup"] for line in mine if line.get("setup")]
            sections[section.name] = {
                "title": section.title,
                "part": part.name,
                "kind": section.kind,
                "status": _section_status(mine),
                "workload": section.workload.describe(),
                "setup": setups[-1] if setups else None,
                **body,
            }
    return {
        "device": device,
        "parts": _parts(suite, lines),
        "sections": sections,
        "headlines": headlines(suite, sections),
    }


def summarise_suite(suite: Suite, lines: list[dict[str, Any]]) -> dict[str, Any]:
    mine = [line for line in lines if line.get("suite") == suite.name]
    return {
        "schema": SUMMARY_SCHEMA,
        "suite": suite.name,
        "devices": [summarise_device(suite, device, found) for device, found in _by_device(mine).items()],
    }
