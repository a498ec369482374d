"""Train the embedded demo pair: a large and a small WanTransformer3DModel on moving digits, same data, same
steps, rectified-flow objective; the tiny UMT5 text encoder learns with the large model and is shared.

Reproducible and resumable: every batch, noise draw and timestep comes from a generator seeded with
``(seed, step)``, and a checkpoint (models, EMA copies, optimisers, log) is written atomically every
``checkpoint_every`` steps and on interrupt, so ``train_pair`` picks up where a sitting ended::

    flowblending-accel train-demo --output runs/demo-train --steps 10000
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import load_bitmaps, sample_batch
from .models import (
    PIXEL_MEAN,
    PIXEL_STD,
    SMALL_SUBFOLDER,
    build_large,
    build_small,
    build_vae,
    encode_prompts,
)
from .text import build_text_encoder, build_tokenizer


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 10000
    batch_size: int = 32
    lr: float = 5e-4
    warmup_steps: int = 200
    final_lr_fraction: float = 0.1
    weight_decay: float = 0.01
    cond_dropout: float = 0.1  # prompt replaced by "" so classifier-free guidance works
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 250
    eval_every: int = 500
    threads: int = 2
    # Logit-normal timesteps, then shifted toward high noise like the sampler's schedule (shift s maps
    # sigma to s*sigma / (1 + (s-1)*sigma)). 1.0 is plain logit-normal, which leaves sigma > 0.9 (where the
    # digit's identity is decided from text) almost untrained.
    timestep_shift: float = 1.0
    # Recipe knobs for ablations (the shipped recipe leaves them at their defaults): size overrides of the
    # large / small transformer, of what both share (e.g. patch_size), the pixel normalisation of the
    # pixel-shuffle latents, and training the large model alone.
    large_overrides: dict = field(default_factory=dict)
    small_overrides: dict = field(default_factory=dict)
    common_overrides: dict = field(default_factory=dict)
    pixel_norm: tuple[float, float] = (PIXEL_MEAN, PIXEL_STD)
    train_small: bool = True
    placement: str = "centre"  # where clips lie across their motion (data.PLACEMENTS); ablations use both
    # An exported pair folder whose weights a fresh run starts from (fine-tuning); "" starts from random
    # weights. A checkpoint in the output folder always wins, so a resumed sitting ignores it.
    init_from: str = ""

    def builders(self) -> dict:
        """Keyword arguments that rebuild this recipe's modules (training, export)."""
        return {
            "large": dict(overrides=self.large_overrides, common=self.common_overrides),
            "small": dict(overrides=self.small_overrides, common=self.common_overrides),
            "vae": dict(pixel_mean=self.pixel_norm[0], pixel_std=self.pixel_norm[1]),
        }


class _Ema:
    """Exponential moving average of a module's float tensors, with the usual warm-up of the decay."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for key, value in module.state_dict().items():
            if key in self.shadow:
                self.shadow[key].lerp_(value, 1 - decay)


class Trainer:
    def __init__(self, config: TrainConfig, output: Path) -> None:
        self.config, self.output = config, output
        torch.set_num_threads(config.threads)
        self.tokenizer = build_tokenizer()
        self.text_encoder = build_text_encoder(seed=config.seed).train()
        builders = config.builders()
        self.large, self.small = (
            build_large(seed=config.seed, **builders["large"]).train(),
            build_small(seed=config.seed + 1, **builders["small"]).train(),
        )
        self.vae = build_vae(**builders["vae"])
        if config.init_from and not self.checkpoint_path.exists():  # a resumed sitting keeps its own weights
            self._start_from_pair(Path(config.init_from))
        self.large_opt = self._optimizer(list(self.large.parameters()) + list(self.text_encoder.parameters()))
        self.small_opt = self._optimizer(list(self.small.parameters()))
        self.ema = {name: _Ema(module, config.ema_decay) for name, module in self.modules().items()}
        self.step, self.log = 0, []
        self.bitmaps = load_bitmaps("train")
        self.validation = self._validation_batch()

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"large": self.large, "small": self.small, "text_encoder": self.text_encoder}

    def _start_from_pair(self, folder: Path) -> None:
        """Load an exported pair's weights; its architecture must be this recipe's."""
        from diffusers import WanTransformer3DModel
        from transformers import UMT5EncoderModel

        sources = {
            "large": (WanTransformer3DModel, "transformer"),
            "small": (WanTransformer3DModel, SMALL_SUBFOLDER),
            "text_encoder": (UMT5EncoderModel, "text_encoder"),
        }
        for name, module in self.modules().items():
            kind, subfolder = sources[name]
            try:  # from_pretrained resolves tied weights; strict loading then checks every shape
                loaded = kind.from_pretrained(folder / subfolder)
            except OSError as error:
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise ValueError(
                    f"init_from={str(folder)!r}: cannot read its {subfolder} ({first}); pass a folder "
                    "written by `flowblending-accel export-demo`."
                ) from None
            try:
                module.load_state_dict(loaded.state_dict(), strict=True)
            except RuntimeError as error:
                details = [line.strip() for line in str(error).splitlines() if line.strip()]
                raise ValueError(
                    f"init_from={str(folder)!r}: its {name} does not fit this recipe ({details[-1]}); pass a "
                    "pair exported with the same model sizes (--large-size) or drop --init-from."
                ) from None

    def _optimizer(self, parameters):
        return torch.optim.AdamW(parameters, lr=self.config.lr, weight_decay=self.config.weight_decay)

    def learning_rate(self, step: int) -> float:
        c = self.config
        if step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        progress = (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps)
        return c.lr * (
            c.final_lr_fraction + (1 - c.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
        )

    # ------------------------------------------------------------------------------------------- step
    def _inputs(self, generator: torch.Generator, clips, prompts, shift: float = 1.0):
        latents = self.vae.encode(clips).latent_dist.mode()
        sigma = torch.sigmoid(torch.randn(len(prompts), generator=generator))  # logit-normal timesteps
        sigma = shift * sigma / (1 + (shift - 1) * sigma)
        noise = torch.randn(latents.shape, generator=generator)
        s = sigma.view(-1, 1, 1, 1, 1)
        return (1 - s) * latents + s * noise, sigma * 1000, noise - latents

    def train_step(self) -> dict[str, float]:
        c = self.config
        generator = torch.Generator().manual_seed(c.seed * 1_000_003 + self.step)
        batch = sample_batch(self.bitmaps, c.batch_size, generator, c.placement)
        drop = torch.rand(c.batch_size, generator=generator) < c.cond_dropout
        prompts = ["" if d else p for d, p in zip(drop.tolist(), batch.prompts, strict=True)]
        noisy, timestep, target = self._inputs(generator, batch.clips, prompts, c.timestep_shift)
        text = encode_prompts(self.tokenizer, self.text_encoder, prompts)
        lr = self.learning_rate(self.step)
        losses = {}
        pairs = [("large", self.large, self.large_opt, text)]
        if c.train_small:
            pairs.append(("small", self.small, self.small_opt, text.detach()))
        for name, model, optimizer, context in pairs:
            for group in optimizer.param_groups:
                group["lr"] = lr
            prediction = model(
                hidden_states=noisy, timestep=timestep, encoder_hidden_states=context, return_dict=False
            )[0]
            loss = F.mse_loss(prediction, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
            optimizer.step()
            losses[name] = loss.item()
        for name, module in self.modules().items():
            self.ema[name].update(module, self.step)
        self.step += 1
        return losses

    # ------------------------------------------------------------------------------------- validation
    def _validation_batch(self):
        generator = torch.Generator().manual_seed(10_000 + self.config.seed)
        batch = sample_batch(load_bitmaps("test"), 128, generator, self.config.placement)
        noisy, timestep, target = self._inputs(generator, batch.clips, batch.prompts)
        return batch.prompts, noisy, timestep, target

    @torch.no_grad()
    def validation_loss(self, use_ema: bool) -> dict[str, float]:
        prompts, noisy, timestep, target = self.validation
        with self.weights(use_ema):
            text = encode_prompts(self.tokenizer, self.text_encoder, prompts)
            return {
                name: F.mse_loss(
                    model(
                        hidden_states=noisy, timestep=timestep, encoder_hidden_states=text, return_dict=False
                    )[0],
                    target,
                ).item()
                for name, model in (("large", self.large), ("small", self.small))
            }

    def weights(self, use_ema: bool):
        return _SwapWeights(self, use_ema)

    # ------------------------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.output / "checkpoint.pt"

    def save(self) -> None:
        self.output.mkdir(parents=True, exist_ok=True)
        state = {
            "config": asdict(self.config),
            "step": self.step,
            "log": self.log,
            "models": {name: module.state_dict() for name, module in self.modules().items()},
            "ema": {name: ema.shadow for name, ema in self.ema.items()},
            "optimizers": {"large": self.large_opt.state_dict(), "small": self.small_opt.state_dict()},
        }
        temporary = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, temporary)
        os.replace(temporary, self.checkpoint_path)
        (self.output / "log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in self.log))

    def load(self) -> bool:
        if not self.checkpoint_path.exists():
            return False
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        saved = state["config"]
        # checkpoints from before placements existed were all trained on clips placed anywhere
        for key, before in (("seed", None), ("placement", "anywhere")):
            if saved.get(key, before) != getattr(self.config, key):
                raise ValueError(
                    f"{self.checkpoint_path} was trained with {key} {saved.get(key, before)}; "
                    f"pass --{key} {saved.get(key, before)} or a new --output."
                )
        if saved.get("init_from") and not self.config.init_from:  # the card names where the run started
            self.config = replace(self.config, init_from=saved["init_from"])
        for name, module in self.modules().items():
            module.load_state_dict(state["models"][name])
            self.ema[name].shadow = state["ema"][name]
        self.large_opt.load_state_dict(state["optimizers"]["large"])
        self.small_opt.load_state_dict(state["optimizers"]["small"])
        self.step, self.log = state["step"], state["log"]
        return True


class _SwapWeights:
    """Temporarily load the EMA weights (and eval mode) into the trainer's modules."""

    def __init__(self, trainer: Trainer, use_ema: bool) -> None:
        self.trainer, self.use_ema, self.saved = trainer, use_ema, {}

    def __enter__(self):
        for name, module in self.trainer.modules().items():
            module.eval()
            if self.use_ema:
                self.saved[name] = {k: v.clone() for k, v in module.state_dict().items()}
                module.load_state_dict({**self.saved[name], **self.trainer.ema[name].shadow})
        return self

    def __exit__(self, *exc) -> None:
        for name, module in self.trainer.modules().items():
            if name in self.saved:
                module.load_state_dict(self.saved[name])
            module.train()


def train_pair(config: TrainConfig, output: Path, progress: bool = True, until: int | None = None) -> Trainer:
    """Train (or resume) until ``config.steps`` (or ``until``, to end a sitting early); checkpoints atomically
    and on SIGTERM / Ctrl-C. The learning-rate schedule always spans ``config.steps``."""
    trainer = Trainer(config, output)
    resumed = trainer.load()
    stop = {"now": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    bar = _progress(progress, config.steps, trainer.step)
    started, running = time.time(), {"large": 0.0, "small": 0.0}
    try:
        last = min(config.steps, until if until is not None else config.steps)
        while trainer.step < last and not stop["now"]:
            losses = trainer.train_step()
            running = {k: 0.98 * running[k] + 0.02 * v if running[k] else v for k, v in losses.items()}
            if bar is not None:
                bar.update(1)
                bar.set_postfix(large=f"{running['large']:.4f}", small=f"{running['small']:.4f}")
            if trainer.step % config.eval_every == 0 or trainer.step == config.steps:
                trainer.log.append(
                    {
                        "step": trainer.step,
                        "train_loss": running,
                        "seconds": time.time() - started,
                        "resumed": resumed,
                        "threads": config.threads,
                        "timestep_shift": config.timestep_shift,
                        "val_raw": trainer.validation_loss(False),
                        "val_ema": trainer.validation_loss(True),
                    }
                )
            if trainer.step % config.checkpoint_every == 0:
                trainer.save()
    except KeyboardInterrupt:
        pass
    finally:
        trainer.save()
        signal.signal(signal.SIGTERM, previous)
        if bar is not None:
            bar.close()
    return trainer


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="training demo pair", mininterval=10)
