"""Why is the embedded large model weak at digit identity? Short, comparable training runs of the large model
alone (same data, seed and steps), one recipe change each from the first pair's recipe (clips anywhere on the
canvas), measured by what identity needs:

* ``x0 probe``: noise held-out clips to sigma 0.9 / 0.7 / 0.5, take the large model's guided (CFG 3) one-step
  prediction of the clean clip and let the metrics classifier read its digit and direction: does the model
  know *which* digit to draw while the noise still hides it?
* ``sampled``: 80 clips sampled in 20 Euler steps (CFG 3, shift 3) from the prompt alone, read the same way:
  the demo's own figure, at this step count.

    python benchmarks/demo_ablations.py --steps 1500 --output benchmarks/results/demo-ablations
    python benchmarks/demo_ablations.py --variants baseline wide --steps 600   # a subset
    python benchmarks/demo_ablations.py --steps 400 --every 400 --conditioning --first-pair runs/demo-pair-v1

``--conditioning`` probes the pairs themselves: the large model's prompt-only prediction at high noise, and
whether it follows the prompt or the clip when the two disagree. ``--first-pair`` names the first shipped
pair (commit 093efc3: ``git archive 093efc3 flowblending_accel/assets/demo_pair | tar -x -C runs/v1``).

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
from flowblending_accel.demo.data import DIRECTIONS, load_bitmaps, prompt_for, sample_batch
from flowblending_accel.demo.models import CLASSIFIER_SUBFOLDER, default_pair_path, encode_prompts
from flowblending_accel.demo.train import TrainConfig, Trainer

BASE = {"placement": "anywhere"}  # the first pair's data, which these ablations studied
VARIANTS = {
    "baseline": {},
    "centre": {"placement": "centre"},
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


def _held_out_prompts(model, clips: int, generator: torch.Generator):
    """A batch of held-out clips (placed as the model was trained) and its prompts encoded with and
    without the text (for CFG)."""
    batch = sample_batch(load_bitmaps("test"), clips, generator, model.config.placement)
    return (batch, *_with_and_without_text(model, batch.prompts))


def _with_and_without_text(model, prompts: list[str]):
    """``prompts`` encoded as given and as empty prompts: the two branches of classifier-free guidance."""
    conditional = encode_prompts(model.tokenizer, model.text_encoder, prompts)
    return conditional, encode_prompts(model.tokenizer, model.text_encoder, [""] * len(prompts))


def _pair_model(folder: Path, placement: str):
    """A pair's large model with its text stack and VAE, shaped like a Trainer for the probes."""
    from types import SimpleNamespace

    from flowblending_accel.demo.models import load_demo_pipeline

    pipe, _ = load_demo_pipeline(folder)
    return SimpleNamespace(
        large=pipe.transformer,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        vae=pipe.vae,
        config=SimpleNamespace(placement=placement),
    )


@torch.no_grad()
def probe(trainer: Trainer, classifier, clips: int = 256, guidance: float = 3.0) -> dict:
    trainer.large.eval()
    trainer.text_encoder.eval()
    generator = torch.Generator().manual_seed(77)
    batch, conditional, unconditional = _held_out_prompts(trainer, clips, generator)
    clean = trainer.vae.encode(batch.clips).latent_dist.mode()
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
    batch, conditional, unconditional = _held_out_prompts(trainer, clips, generator)
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
    recipe = {**BASE, **overrides}
    config = TrainConfig(steps=steps, threads=threads, train_small=False, eval_every=10**9, **recipe)
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


PAIRS = {"first pair": ("anywhere", 13000, 0.0926), "shipped pair": ("centre", 13000 + 4000, 0.0596)}


def pair_reference(name: str, folder: Path, classifier) -> dict:
    """The same probe on a pair's large model (EMA weights); val loss from its card."""
    placement, steps, val_loss = PAIRS[name]
    model = _pair_model(folder, placement)
    row = {"step": steps, "seconds": 0.0, "val_loss": val_loss, **probe(model, classifier)}
    parameters = sum(p.numel() for p in model.large.parameters())
    overrides = {"weights": f"EMA, clips {placement}"}
    return {"overrides": overrides, "parameters": parameters, "rows": [row]}


@torch.no_grad()
def conditioning_probe(model, classifier, clips: int = 256) -> list[dict]:
    """Does the prompt alone decide the digit? A pair's large model's guided clean prediction from
    (almost) pure noise, where the clip itself says nothing, read by the classifier, per guidance scale."""
    generator = torch.Generator().manual_seed(79)
    batch, conditional, unconditional = _held_out_prompts(model, clips, generator)
    clean = model.vae.encode(batch.clips).latent_dist.mode()
    noise = torch.randn(clean.shape, generator=generator)
    rows = []
    for sigma in (1.0, 0.95, 0.9):
        noisy = (1 - sigma) * clean + sigma * noise
        for guidance in (1.0, 3.0, 8.0):
            x0 = noisy - sigma * _guided(model, noisy, sigma, conditional, unconditional, guidance)
            digit, direction = _read(model, classifier, x0, batch)
            rows.append({"sigma": sigma, "guidance": guidance, "x0_digit": digit, "x0_direction": direction})
            print("conditioning", json.dumps(rows[-1]), flush=True)
    ideal = _ideal_at_pure_noise(classifier, model.config.placement)
    rows.append({"sigma": 1.0, "guidance": "ideal", **ideal})
    return rows


@torch.no_grad()
def prompt_or_signal(model, classifier, clips: int = 256) -> list[dict]:
    """When the prompt names another digit than the noised clip shows, which one does the model's clean
    prediction draw? An ideal model follows the prompt (no training clip disagrees with its prompt)."""
    generator = torch.Generator().manual_seed(5)
    batch = sample_batch(load_bitmaps("test"), clips, generator, model.config.placement)
    other = (batch.digits + torch.randint(1, 10, (clips,), generator=generator)) % 10
    prompts = [prompt_for(int(d), DIRECTIONS[int(s)]) for d, s in zip(other, batch.directions, strict=True)]
    conditional, unconditional = _with_and_without_text(model, prompts)
    clean = model.vae.encode(batch.clips).latent_dist.mode()
    rows = []
    for sigma in (0.95, 0.9, 0.8, 0.7, 0.5):
        for guidance in (1.0, 3.0):
            noisy = (1 - sigma) * clean + sigma * torch.randn(clean.shape, generator=generator)
            x0 = noisy - sigma * _guided(model, noisy, sigma, conditional, unconditional, guidance)
            read = classifier(model.vae.decode(x0).sample.clamp(-1, 1))[0].argmax(1)
            rows.append(
                {
                    "sigma": sigma,
                    "guidance": guidance,
                    "reads_prompt": float((read == other).float().mean()),
                    "reads_clip": float((read == batch.digits).float().mean()),
                }
            )
            print("prompt or signal", json.dumps(rows[-1]), flush=True)
    return rows


@torch.no_grad()
def _ideal_at_pure_noise(classifier, placement: str, clips: int = 4000) -> dict:
    """What a perfect model predicts from pure noise is the mean clip of its prompt (over writers and,
    placed anywhere, start positions); how often the classifier reads that mean's digit bounds the probe
    at sigma 1."""
    batch = sample_batch(load_bitmaps("test"), clips, torch.Generator().manual_seed(5), placement)
    means, digits, directions = [], [], []
    for digit in range(10):
        for direction in range(4):
            chosen = (batch.digits == digit) & (batch.directions == direction)
            means.append(batch.clips[chosen].mean(0))
            digits.append(digit)
            directions.append(direction)
    read_digits, read_directions, _ = classifier(torch.stack(means))
    return {
        "x0_digit": float((read_digits.argmax(1) == torch.tensor(digits)).float().mean()),
        "x0_direction": float((read_directions.argmax(1) == torch.tensor(directions)).float().mean()),
    }


def markdown(results: dict, command: str, pairs: dict) -> str:
    lines = [
        "# Embedded pair: what decides digit identity? (pairs, and short runs of the large model alone)",
        "",
        f"`{command}`; held-out writers; the metrics classifier reads each clip (its ceiling on real clips: "
        "digit 0.961, motion 1.000). x0@σ: the guided one-step clean prediction from noise level σ. "
        "Validation losses compare within one pixel normalisation (raw-pixels trains on another scale). "
        "Variants change one thing from the first pair's recipe, whose clips lie anywhere on the canvas.",
        "",
        "| variant | change | params | step | val loss | x0 digit @0.9 | @0.7 | @0.5 | sampled digit | "
        "sampled motion | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = [*PAIRS, *VARIANTS]
    for name, result in sorted(results.items(), key=lambda item: order.index(item[0])):
        for row in result["rows"]:
            loss = "—" if row["val_loss"] is None else f"{row['val_loss']:.4f}"
            lines.append(
                f"| {name} | {result['overrides'] or '—'} | {result['parameters']:,} | {row['step']} | "
                f"{loss} | {row['x0_digit@0.9']:.3f} | {row['x0_digit@0.7']:.3f} | "
                f"{row['x0_digit@0.5']:.3f} | {row['sampled_digit']:.3f} | {row['sampled_direction']:.3f} | "
                f"{row['seconds']} |"
            )
    for name, probes in pairs.items():
        lines += _pair_tables(name, probes)
    return "\n".join(lines) + "\n"


def _pair_tables(name: str, probes: dict) -> list[str]:
    lines = []
    if probes.get("conditioning"):
        lines += [
            "",
            f"Does the prompt alone decide the digit? The {name}'s large model: guided one-step clean "
            "prediction at high noise (σ 1.0: pure noise, the clip says nothing), read by the classifier "
            "(`--conditioning`, 256 held-out clips; *ideal*: the mean clip of each of the 40 prompts, what a "
            "perfect model predicts from pure noise):",
            "",
            "| σ | guidance | x0 digit | x0 motion |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['sigma']} | {r['guidance']} | {r['x0_digit']:.3f} | {r['x0_direction']:.3f} |"
            for r in probes["conditioning"]
        ]
    if probes.get("prompt_or_signal"):
        lines += [
            "",
            f"Prompt or clip? The {name}'s large model given a held-out clip noised to σ and a prompt naming "
            "another digit: how often its guided clean prediction reads as the prompted digit, and as the "
            "clip's (256 clips):",
            "",
            "| σ | guidance | reads the prompt | reads the clip |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['sigma']} | {r['guidance']} | {r['reads_prompt']:.3f} | {r['reads_clip']:.3f} |"
            for r in probes["prompt_or_signal"]
        ]
    return lines


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
    parser.add_argument("--conditioning", action="store_true", help="also probe the pairs' conditioning")
    parser.add_argument("--first-pair", type=Path, default=None, help="the first shipped pair's folder")
    args = parser.parse_args()
    command = f"python benchmarks/demo_ablations.py --steps {args.steps} --every {args.every}"
    command += " --conditioning" * args.conditioning
    command += f" --first-pair {args.first_pair}" if args.first_pair else ""
    classifier = load_classifier(default_pair_path() / CLASSIFIER_SUBFOLDER)
    path = args.output / "ablations.json"
    document = json.loads(path.read_text()) if path.exists() else {}
    results, pairs = document.get("variants", {}), document.get("pairs", {})
    folders = {"shipped pair": default_pair_path(), "first pair": args.first_pair}
    for name, folder in folders.items():
        if folder is not None and (name not in results or args.conditioning):
            results[name] = pair_reference(name, folder, classifier)
        if folder is not None and args.conditioning:
            model = _pair_model(folder, PAIRS[name][0])
            pairs[name] = {
                "conditioning": conditioning_probe(model, classifier),
                "prompt_or_signal": prompt_or_signal(model, classifier),
            }
    for name in args.variants:
        if name in results and results[name]["rows"] and results[name]["rows"][-1]["step"] >= args.steps:
            continue
        results[name] = run_variant(name, args.steps, args.every, classifier, args.scratch, args.threads)
        _write(args.output, command, results, pairs)
    _write(args.output, command, results, pairs)


def _write(output: Path, command: str, results: dict, pairs: dict) -> None:
    output.mkdir(parents=True, exist_ok=True)
    document = {"command": command, "variants": results, "pairs": pairs}
    (output / "ablations.json").write_text(json.dumps(document, indent=2) + "\n")
    (output / "ablations.md").write_text(markdown(results, command, pairs))


if __name__ == "__main__":
    main()
