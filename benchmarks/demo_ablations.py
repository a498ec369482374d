"""Why is the embedded large model weak at digit identity? Short, comparable training runs of the large model
alone (same data, seed and steps), one recipe change each, measured by what identity needs:

* ``x0 probe``: noise held-out clips to sigma 0.9 / 0.7 / 0.5, take the large model's guided (CFG 3) one-step
  prediction of the clean clip and let the metrics classifier read its digit and direction: does the model
  know *which* digit to draw while the noise still hides it?
* ``sampled``: 80 clips sampled in 20 Euler steps (CFG 3, shift 3) from the prompt alone, read the same way:
  the demo's own figure, at this step count.

    python benchmarks/demo_ablations.py --steps 1500 --output benchmarks/results/demo-ablations
    python benchmarks/demo_ablations.py --variants baseline wide --steps 600   # a subset

Writes ablations.json and ablations.md after every variant (a run can be stopped and resumed: finished
variants are kept).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from flowblending_accel.demo.classifier import load_classifier
from flowblending_accel.demo.data import load_bitmaps, sample_batch
from flowblending_accel.demo.models import CLASSIFIER_SUBFOLDER, default_pair_path, encode_prompts
from flowblending_accel.demo.train import TrainConfig, Trainer

VARIANTS = {
    "baseline": {},
    "shift3": {"timestep_shift": 3.0},
    "lr1e-3": {"lr": 1e-3},
    "wide": {"large_overrides": {"num_attention_heads": 8, "ffn_dim": 768}},
    "deep": {"large_overrides": {"num_layers": 8}},
    "raw-pixels": {"pixel_norm": (0.0, 1.0)},
    "patch1": {"common_overrides": {"patch_size": (1, 1, 1)}},
}
SIGMAS = (0.9, 0.7, 0.5)


@torch.no_grad()
def _guided(trainer: Trainer, latents, sigma, conditional, unconditional, guidance: float):
    timestep = torch.full((len(latents),), sigma * 1000.0)
    velocity = [
        trainer.large(
            hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False
        )[0]
        for text in (conditional, unconditional)
    ]
    return velocity[1] + guidance * (velocity[0] - velocity[1])


@torch.no_grad()
def probe(trainer: Trainer, classifier, clips: int = 256, guidance: float = 3.0) -> dict:
    trainer.large.eval()
    trainer.text_encoder.eval()
    generator = torch.Generator().manual_seed(77)
    batch = sample_batch(load_bitmaps("test"), clips, generator)
    clean = trainer.vae.encode(batch.clips).latent_dist.mode()
    conditional = encode_prompts(trainer.tokenizer, trainer.text_encoder, batch.prompts)
    unconditional = encode_prompts(trainer.tokenizer, trainer.text_encoder, [""] * clips)
    result = {}
    for sigma in SIGMAS:
        noisy = (1 - sigma) * clean + sigma * torch.randn(clean.shape, generator=generator)
        x0 = noisy - sigma * _guided(trainer, noisy, sigma, conditional, unconditional, guidance)
        result[f"x0_digit@{sigma}"], result[f"x0_direction@{sigma}"] = _read(trainer, classifier, x0, batch)
    result["sampled_digit"], result["sampled_direction"] = _sampled(trainer, classifier, guidance)
    trainer.large.train()
    trainer.text_encoder.train()
    return result


def _read(trainer: Trainer, classifier, latents, batch) -> tuple[float, float]:
    pixels = trainer.vae.decode(latents).sample.clamp(-1, 1)
    digits, directions, _ = classifier(pixels)
    return (
        float((digits.argmax(1) == batch.digits).float().mean()),
        float((directions.argmax(1) == batch.directions).float().mean()),
    )


@torch.no_grad()
def _sampled(trainer: Trainer, classifier, guidance: float, clips: int = 80, steps: int = 20) -> tuple:
    from diffusers import FlowMatchEulerDiscreteScheduler

    generator = torch.Generator().manual_seed(78)
    batch = sample_batch(load_bitmaps("test"), clips, generator)
    conditional = encode_prompts(trainer.tokenizer, trainer.text_encoder, batch.prompts)
    unconditional = encode_prompts(trainer.tokenizer, trainer.text_encoder, [""] * clips)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(steps)
    shape = trainer.vae.encode(batch.clips[:1]).latent_dist.mode().shape[1:]
    latents = torch.randn((clips, *shape), generator=generator)
    for index, sigma in enumerate(scheduler.sigmas[:-1].tolist()):
        velocity = _guided(trainer, latents, sigma, conditional, unconditional, guidance)
        latents = latents + (scheduler.sigmas[index + 1] - sigma) * velocity
    return _read(trainer, classifier, latents, batch)


def run_variant(name: str, steps: int, every: int, classifier, scratch: Path, threads: int) -> dict:
    overrides = VARIANTS[name]
    config = TrainConfig(steps=steps, threads=threads, train_small=False, eval_every=10**9, **overrides)
    trainer = Trainer(config, scratch / name)
    rows, started = [], time.time()
    while trainer.step < steps:
        trainer.train_step()
        if trainer.step % every == 0:
            row = {"step": trainer.step, "seconds": round(time.time() - started, 1)}
            row.update(val_loss=trainer.validation_loss(False)["large"], **probe(trainer, classifier))
            rows.append(row)
            print(name, json.dumps(row), flush=True)
    parameters = sum(p.numel() for p in trainer.large.parameters())
    return {"overrides": {k: str(v) for k, v in overrides.items()}, "parameters": parameters, "rows": rows}


def shipped_reference(classifier) -> dict:
    """The same probe on the shipped pair's large model (EMA weights, 13,000 steps)."""
    from types import SimpleNamespace

    from flowblending_accel.demo.models import load_demo_pipeline

    pipe, _ = load_demo_pipeline()
    model = SimpleNamespace(
        large=pipe.transformer, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, vae=pipe.vae
    )
    row = {"step": 13000, "seconds": 0.0, "val_loss": 0.0926, **probe(model, classifier)}
    parameters = sum(p.numel() for p in pipe.transformer.parameters())
    return {
        "overrides": {"shipped": "EMA weights; val loss from its card"},
        "parameters": parameters,
        "rows": [row],
    }


def markdown(results: dict, command: str) -> str:
    lines = [
        "# Embedded pair: why is digit identity weak? (large model alone, short runs)",
        "",
        f"`{command}`; held-out writers; the metrics classifier reads each clip (its ceiling on real clips: "
        "digit 0.961, motion 1.000). x0@σ: the guided one-step clean prediction from noise level σ.",
        "",
        "| variant | change | params | step | val loss | x0 digit @0.9 | @0.7 | @0.5 | sampled digit | "
        "sampled motion | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        for row in result["rows"]:
            lines.append(
                f"| {name} | {result['overrides'] or '—'} | {result['parameters']:,} | {row['step']} | "
                f"{row['val_loss']:.4f} | {row['x0_digit@0.9']:.3f} | {row['x0_digit@0.7']:.3f} | "
                f"{row['x0_digit@0.5']:.3f} | {row['sampled_digit']:.3f} | {row['sampled_direction']:.3f} | "
                f"{row['seconds']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default = [name for name in VARIANTS if name != "patch1"]  # patch1: 4x the tokens, 4x slower steps
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=default)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/demo-ablations"))
    parser.add_argument("--scratch", type=Path, default=Path("runs/ablations"))
    args = parser.parse_args()
    command = f"python benchmarks/demo_ablations.py --steps {args.steps} --every {args.every}"
    classifier = load_classifier(default_pair_path() / CLASSIFIER_SUBFOLDER)
    path = args.output / "ablations.json"
    results = json.loads(path.read_text())["variants"] if path.exists() else {}
    if "shipped" not in results:
        results["shipped"] = shipped_reference(classifier)
    for name in args.variants:
        if name in results and results[name]["rows"] and results[name]["rows"][-1]["step"] >= args.steps:
            continue
        results[name] = run_variant(name, args.steps, args.every, classifier, args.scratch, args.threads)
        args.output.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"command": command, "variants": results}, indent=2) + "\n")
        (args.output / "ablations.md").write_text(markdown(results, command))


if __name__ == "__main__":
    main()
