"""Write the demo's outputs atomically: ``report.md``, ``results.json``, ``grid.gif`` (animated) and
``grid.png`` (first, middle and last frame of every cell)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from ..support.files import write_atomic

CELL_SCALE = 3
LABEL_WIDTH = 120
HEADER = 16


def _cell(frames01: torch.Tensor, frame: int, scale: int) -> Image.Image:
    pixels = (frames01[0, frame].clamp(0, 1) * 255).round().byte().numpy()
    return Image.fromarray(pixels, mode="L").resize(
        (pixels.shape[1] * scale, pixels.shape[0] * scale), Image.NEAREST
    )


def grid_frames(
    columns: dict[str, torch.Tensor], prompts: list[str], frame_ids: list[int], scale: int
) -> list[Image.Image]:
    """One image per entry of ``frame_ids``; ``columns`` maps a label to clips ``(N, 1, F, H, W)`` in
    [0, 1]."""
    first = next(iter(columns.values()))
    cell_h, cell_w = first.shape[-2] * scale, first.shape[-1] * scale
    width = LABEL_WIDTH + len(columns) * (cell_w + 4)
    height = HEADER + len(prompts) * (cell_h + 4)
    images = []
    for frame in frame_ids:
        canvas = Image.new("L", (width, height), 255)
        draw = ImageDraw.Draw(canvas)
        draw.text((4, 2), f"frame {frame + 1} of {first.shape[2]}", fill=0)
        for c, label in enumerate(columns):
            draw.text((LABEL_WIDTH + c * (cell_w + 4) + 2, 2), label, fill=0)
        for r, prompt in enumerate(prompts):
            y = HEADER + r * (cell_h + 4)
            draw.text((4, y + cell_h // 2 - 6), prompt, fill=0)
            for c, clips in enumerate(columns.values()):
                canvas.paste(_cell(clips[r], frame, scale), (LABEL_WIDTH + c * (cell_w + 4), y))
        images.append(canvas)
    return images


def write_grids(folder: Path, columns: dict[str, torch.Tensor], prompts: list[str]) -> None:
    frames = next(iter(columns.values())).shape[2]
    animated = grid_frames(columns, prompts, list(range(frames)), CELL_SCALE)
    gif = _encode(
        lambda stream: animated[0].save(
            stream, format="GIF", save_all=True, append_images=animated[1:], duration=180, loop=0
        )
    )
    write_atomic(folder / "grid.gif", gif)
    strips = grid_frames(columns, prompts, [0, frames // 2, frames - 1], 2)
    strip = Image.new("L", (strips[0].width * 3 + 16, strips[0].height), 255)
    for i, image in enumerate(strips):
        strip.paste(image, (i * (image.width + 8), 0))
    write_atomic(folder / "grid.png", _encode(lambda stream: strip.save(stream, format="PNG")))


def _encode(save) -> bytes:
    import io

    stream = io.BytesIO()
    save(stream)
    return stream.getvalue()


def _ci(entry: dict | None, digits: int = 3) -> str:
    if entry is None:
        return "—"
    return f"{entry['mean']:.{digits}f} [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"


def markdown_report(rows: dict, context: dict) -> str:
    lines = [
        "# FlowBlending demo: the embedded moving-digits pair",
        "",
        f"- command: `{context['command']}`",
        f"- device: {context['device']}; torch {context['versions']['torch']}, diffusers "
        f"{context['versions']['diffusers']}; {context['threads']}",
        f"- samples: {context['samples']} clips per schedule ({context['prompts']} prompts x "
        f"{context['samples_per_prompt']} seeds), identical initial noise across schedules; "
        f"{context['steps']} FlowMatch Euler steps (shift {context['shift']}), guidance "
        f"{context['guidance_scale']}",
        f"- per-call FLOPs (one sample, measured): large {context['flops']['large'] / 1e6:.1f} MFLOP, small "
        f"{context['flops']['small'] / 1e6:.1f} MFLOP "
        f"({context['flops']['large'] / context['flops']['small']:.1f}x)",
        _timing_line(context),
    ]
    if not context["complete"]:
        lines.append("- **partial**: interrupted; only the chunks every schedule finished are reported")
    warning = speed_warning(rows, context)
    if warning:
        lines.append(f"- **warning**: {warning}")
    lines += [
        "",
        "| schedule | stages | speedup vs LLL [95 %] | FLOPs vs LLL | large / small calls | "
        "PSNR vs LLL (dB) | SSIM vs LLL | temporal consistency | digit accuracy | motion accuracy | "
        f"FD to real (± sd, n = {context['samples']}) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        if name == "real":
            continue
        calls = row["calls_per_sample"]
        lines.append(
            f"| {name} | {row['schedule']} | {speed_cell(row['speedup_vs_lll'])} | "
            f"{row['flops_vs_lll']:.3f} | {_calls(calls.get('large', 0))} / "
            f"{_calls(calls.get('small', 0))} | "
            f"{_ci(row['psnr_vs_lll'], 2)} | {_ci(row['ssim_vs_lll'])} | "
            f"{_ci(row['temporal_consistency'])} | "
            f"{_ci(row['digit_accuracy'])} | {_ci(row['direction_accuracy'])} | "
            f"{row['fd_to_real']['value']:.2f} ± {row['fd_to_real']['bootstrap_sd']:.2f} |"
        )
    real = rows["real"]
    lines += [
        f"| real clips | held-out writers | — | — | — | — | — | {_ci(real['temporal_consistency'])} | "
        f"{_ci(real['digit_accuracy'])} | {_ci(real['direction_accuracy'])} | "
        f"{real['fd_to_real']['value']:.2f} ± {real['fd_to_real']['bootstrap_sd']:.2f} |",
        "",
        *[_boundary_line(name, row) for name, row in rows.items() if row.get("boundaries")],
        "Intervals are 95 % (normal for means, Wilson for accuracies). "
        "PSNR / SSIM compare each clip with the",
        "LLL clip from the same noise. Accuracies and FD come "
        "from a video classifier trained on real clips of",
        "the training writers; the `real clips` row is its ceiling and the FD noise floor (real vs real).",
        "FLOPs are measured per call (attention included) and multiplied by the calls made; the FLOP-ideal",
        "speedup is 1 / (FLOPs vs LLL). Small per-call work on a CPU leaves fixed per-call costs (text, VAE,",
        "scheduler, Python) that do not shrink with the model, so measured speedups fall below that ideal.",
        "",
        "![grid](grid.png)",
        "",
        "The grid: one row per prompt; columns are a real clip of held-out writers, then each schedule from "
        "the same noise; the three panels side by side are the first, middle and last frame of each clip. "
        "Animated: [grid.gif](grid.gif).",
        "",
    ]
    return "\n".join(lines)


def _calls(count: float) -> str:
    """Calls per sample: whole for a fixed schedule, to a tenth where an adaptive one differs per sample."""
    return f"{round(count, 1):g}"


def _boundary_line(name: str, row: dict) -> str:
    found = row["boundaries"]
    counts = ", ".join(f"step {step}: {count}" for step, count in found["counts"].items())
    mean = found["mean"]
    return f"- {name}, adaptive: the step each clip entered the small stage: mean {mean:.2f} ({counts})\n"


def speed_cell(speed: dict) -> str:
    """``1.41 [1.30, 1.48]``, marked when the figure cannot be trusted."""
    mark = "" if speed.get("reliable", True) else " ⚠"
    return f"{speed['median']:.2f} [{speed['low']:.2f}, {speed['high']:.2f}]{mark}"


def speed_warning(rows: dict, context: dict) -> str | None:
    """One line saying why the speed figures are marked, or None when none is."""
    marked = [
        name
        for name, row in rows.items()
        if name != "real" and not row["speedup_vs_lll"].get("reliable", True)
    ]
    if not marked:
        return None
    reasons = []
    if context.get("timing", {}).get("busy"):
        reasons.append(f"other processes used {context['timing']['other_load']:.0%} of the CPU while timing")
    if any(
        rows[name]["speedup_vs_lll"]["low"] <= 1.0 <= rows[name]["speedup_vs_lll"]["high"]
        for name in marked
        if name != "LLL"
    ):
        reasons.append("an interval includes 1.0x (no measurable speedup at this precision)")
    return (
        f"speed figures marked ⚠ ({', '.join(marked)}) are not reliable: {'; '.join(reasons)}; rerun on an "
        "idle machine or with more --timing-seconds."
    )


def _timing_line(context: dict) -> str:
    timing = context.get("timing") or {}
    load = timing.get("other_load")
    load_text = "unknown" if load is None else f"{load:.0%}"
    return (
        f"- timing: {timing.get('rounds', 0)} interleaved rounds of {timing.get('clips', 0)} clips per "
        f"schedule (rotated order, time box {timing.get('seconds', 0):g} s) after a warm-up; speedup = "
        "median over rounds of LLL time / schedule time, with a bootstrap 95 % interval; other processes' "
        f"share of the CPU meanwhile: {load_text}"
    )


def write_outputs(
    folder: Path, rows: dict, context: dict, columns: dict[str, torch.Tensor], prompts: list[str]
) -> None:
    write_grids(folder, columns, prompts)
    write_atomic(
        folder / "results.json", (json.dumps({"context": context, "rows": rows}, indent=2) + "\n").encode()
    )
    write_atomic(folder / "report.md", markdown_report(rows, context).encode())
