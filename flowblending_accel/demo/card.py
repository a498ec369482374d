"""The shipped pair's model card, written from the training log and the evaluation results (no number typed
by hand): ``flowblending-accel export-demo ... --card-results benchmarks/results/demo/results.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .models import COMMON, LARGE, PIXEL_MEAN, PIXEL_STD, SHIFT, SMALL


def _params(spec: dict[str, Any]) -> str:
    width = spec["num_attention_heads"] * spec["attention_head_dim"]
    return (
        f"{spec['num_layers']} blocks, width {width} "
        f"({spec['num_attention_heads']} heads x {spec['attention_head_dim']}), FFN {spec['ffn_dim']}"
    )


def _history(log: list[dict[str, Any]], key: str, default: Any) -> str:
    """``value from step N, ...`` for a setting recorded in the log (``default`` before it was recorded)."""
    spans, previous = [], None
    for row in log:
        value = row.get(key, default)
        if value != previous:
            spans.append(f"{value} (log rows from step {row['step']})")
            previous = value
    return ", ".join(spans) or "unknown"


def _placement(placement: str) -> str:
    if placement == "centre":
        return (
            "Each clip crosses the canvas along its centre line, so the prompt fixes all but the "
            "writer's hand "
            "(`placement='centre'`)."
        )
    return "Each clip's path lies anywhere across its direction of motion (`placement='anywhere'`)."


def _lineage(config: dict[str, Any]) -> list[str]:
    """A fine-tuned pair names where it started; its log and steps below are the fine-tune's own."""
    if not config.get("init_from"):
        return []
    return [
        f"- started from the pair in `{config['init_from']}` (its own training is the first commands below); "
        "the steps, clock and losses above and below are this fine-tune's."
    ]


def model_card(
    log: list[dict[str, Any]],
    config: dict[str, Any],
    results: dict[str, Any] | None,
    classifier: dict[str, Any] | None,
    commands: dict[str, str],
    ablations: str | None = None,
    notes: str | None = None,
) -> str:
    last = log[-1] if log else {}
    lines = [
        "# flowblending-accel demo pair: moving digits (large + small WanTransformer3DModel)",
        "",
        "A real diffusers `WanPipeline` trained from scratch "
        "on CPU so that FlowBlending can be shown without",
        "downloads: a large and a small transformer of one family, "
        "trained on the same data for the same steps.",
        "",
        "## Data",
        "Procedural text-to-video clips (`flowblending_accel/demo/data.py`): "
        "one handwritten digit from the UCI /",
        "scikit-learn 8x8 digits (shipped as `digits.npz`, upscaled to 16x16) crossing a 32x32 canvas in 9",
        'grayscale frames at 2 px per frame, left / right / up / down, prompted `"a 7 moving left"`. '
        "Bitmaps are",
        "split by index: 4/5 train writers, 1/5 held-out test writers (metrics use the held-out ones).",
        _placement(config.get("placement", "anywhere")),
        "",
        "## Models",
        f"- large: {_params({**LARGE, **config.get('large_overrides', {})})}; small: {_params(SMALL)}; "
        f"shared: patch {COMMON['patch_size']}, "
        f"{COMMON['in_channels']} latent channels, text width {COMMON['text_dim']}.",
        "- VAE: `PixelShuffleVAE`, a fixed lossless 2x4x4 space/time-to-depth (pixel space; "
        "see its docstring),"
        f" normalised by pixel mean {PIXEL_MEAN} / std {PIXEL_STD}.",
        "- text: word-level tokenizer + 2-layer UMT5 encoder (width 64), "
        "trained with the large model and shared.",
        f"- scheduler: FlowMatch Euler, shift {SHIFT}; call with `max_sequence_length=8, height=32, width=32,"
        " num_frames=9` (`flowblending_accel.demo.models.CALL_DEFAULTS`).",
        "",
        "## Training",
        f"- objective: rectified flow (velocity = noise - x0), logit-normal timesteps, prompt dropout "
        f"{config.get('cond_dropout')}; AdamW lr {config.get('lr')} (warm-up {config.get('warmup_steps')}, "
        f"cosine to {config.get('final_lr_fraction')}x), batch {config.get('batch_size')}, "
        f"EMA {config.get('ema_decay')} "
        "(shipped weights are the EMA).",
        f"- steps: {last.get('step')} for both models, seed {config.get('seed')}; training-timestep shift: "
        f"{_history(log, 'timestep_shift', 1.0)}; CPU threads: {_history(log, 'threads', 1)} (thread count "
        "changes float summation order, not the recipe); "
        f"{last.get('seconds', 0) / 3600:.1f} h in the final sitting's clock.",
        *_lineage(config),
        "- commands, in order: " + "; then ".join(f"`{c}`" for c in commands.get("train", [])),
        f"- export: `{commands.get('export')}`",
        "",
        "| step | val loss large (EMA) | val loss small (EMA) |",
        "|---|---|---|",
    ]
    shown = log[:: max(1, len(log) // 10)]
    if log and shown[-1] is not log[-1]:
        shown.append(log[-1])
    for row in shown:
        lines.append(f"| {row['step']} | {row['val_ema']['large']:.4f} | {row['val_ema']['small']:.4f} |")
    if classifier:
        lines += [
            "",
            "## Metrics classifier",
            f"3D CNN trained on train-writer clips ({classifier['steps']} steps); "
            f"held-out accuracy: digit {classifier['test_digit_accuracy']:.3f}, motion "
            f"{classifier['test_direction_accuracy']:.3f} on {classifier['test_clips']} clips. Command: "
            f"`{commands.get('classifier')}`",
        ]
    if results:
        lines += [
            "",
            "## Evaluation",
            f"From `{results['context']['command']}` ({results['context']['samples']} clips per schedule):",
            "",
            "| schedule | FLOPs vs LLL | digit accuracy | motion accuracy |",
            "|---|---|---|---|",
        ]
        for name, row in results["rows"].items():
            if name != "real":
                lines.append(
                    f"| {name} ({row['schedule']}) | {row['flops_vs_lll']:.3f} | "
                    f"{row['digit_accuracy']['mean']:.3f} | {row['direction_accuracy']['mean']:.3f} |"
                )
    card = "\n".join(lines) + "\n" + (ablation_section(ablations) if ablations else "")
    return card + ("\n" + notes.strip() + "\n" if notes else "")


def ablation_section(markdown: str) -> str:
    """The recipe ablations (``benchmarks/demo_ablations.py``'s ablations.md) as a section of the card."""
    body = markdown.split("\n", 1)[1] if markdown.startswith("# ") else markdown
    return "\n## Recipe ablations: what decides digit identity\n" + body


def write_card(
    folder: Path,
    checkpoint_log: Path,
    config: dict[str, Any],
    results: Path | None,
    commands: dict[str, str],
    ablations: Path | None = None,
    notes: Path | None = None,
) -> None:
    """``notes``: a hand-written markdown file (the reading of the ablations) appended as it is."""
    from ..support.files import write_atomic

    log = [json.loads(line) for line in checkpoint_log.read_text().splitlines() if line.strip()]
    classifier_report = folder / "classifier" / "classifier.json"
    classifier = json.loads(classifier_report.read_text()) if classifier_report.exists() else None
    loaded = json.loads(results.read_text()) if results else None
    text = ablations.read_text() if ablations else None
    extra = notes.read_text() if notes else None
    card = model_card(log, config, loaded, classifier, commands, text, extra)
    write_atomic(folder / "README.md", card.encode())
