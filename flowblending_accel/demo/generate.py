"""Generate the demo's comparison: every schedule on the same prompts and the same initial noise.

Schedules run interleaved per chunk (their order rotated chunk by chunk so none always runs first), after a
warm-up that touches both models and both CFG branches. The speed figures come from a separate timing phase
on the same pipeline (:mod:`.timing`): interleaved, time-boxed rounds with an interval and a warning.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..accelerators import flowblending
from ..metrics.flops import flops_per_call
from .compared_schedules import SCHEDULES
from .data import all_prompts
from .models import demo_call_kwargs
from .timing import Timing, time_schedules

NOTE_SECONDS = 5.0  # how often the timing phase says it is still timing


@dataclass(frozen=True)
class DemoSettings:
    steps: int = 20
    guidance_scale: float = 3.0
    samples_per_prompt: int = 1
    chunk_size: int = 10
    base_seed: int = 0
    prompts: tuple[str, ...] = tuple(all_prompts())
    schedules: tuple[str, ...] = tuple(SCHEDULES)
    timing_seconds: float = 20.0  # the speed figures' time box (at least five rounds)
    timing_clips: int = 4  # clips per timed call

    def __post_init__(self) -> None:
        for name in ("steps", "samples_per_prompt", "chunk_size", "timing_clips"):
            if getattr(self, name) < 1:
                raise ValueError(f"DemoSettings.{name}={getattr(self, name)} must be at least 1.")
        if self.timing_seconds < 0:
            raise ValueError(f"DemoSettings.timing_seconds={self.timing_seconds} must be 0 or more.")

    def samples(self) -> list[tuple[str, int]]:
        """(prompt, seed) pairs; seeds are distinct per sample and independent of the chunking."""
        return [
            (prompt, self.base_seed + 1000 * repeat + index)
            for repeat in range(self.samples_per_prompt)
            for index, prompt in enumerate(self.prompts)
        ]


@dataclass
class Generated:
    """Frames per schedule ``(N, 1, F, H, W)`` in [0, 1], chunk timings and per-model calls."""

    settings: DemoSettings
    samples: list[tuple[str, int]]
    frames: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    calls: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # per chunk, per-sample calls
    # Adaptive schedules: per chunk, the step each sample entered the small stage.
    boundaries: dict[str, list[list[int]]] = field(default_factory=dict)
    flops_per_sample_call: dict[str, int] = field(default_factory=dict)
    complete: bool = False
    timing: Timing | None = None

    def stacked(self, schedule: str) -> torch.Tensor:
        return torch.cat(self.frames[schedule])

    def total_calls(self, schedule: str) -> dict[str, float]:
        totals = {"large": 0.0, "small": 0.0}
        for chunk in self.calls[schedule]:
            for model, count in chunk.items():
                totals[model] += count
        return totals

    @property
    def done(self) -> int:
        return sum(len(chunk) for chunk in self.frames.get("LLL", []))


def generate_clips(pipe, prompts: list[str], seeds: list[int], settings: DemoSettings) -> torch.Tensor:
    """One pipeline call; every sample gets its own seeded generator, so its noise ignores the batch."""
    output = pipe(**demo_call_kwargs(prompts, seeds, settings.steps, settings.guidance_scale))
    frames = torch.from_numpy(np.asarray(output.frames))  # (B, F, H, W, C)
    return frames.permute(0, 4, 1, 2, 3).contiguous()


def run_comparison(pipe, small, settings: DemoSettings, progress=None, samples=None) -> Generated:
    """Generate every schedule chunk by chunk; a Ctrl-C keeps the chunks already done (``complete=False``).

    ``samples`` (default: all of ``settings``) lets a data-parallel rank generate only its share.
    """
    samples = samples if samples is not None else settings.samples()
    result = Generated(settings, samples)
    first = settings.samples()[0]
    result.flops_per_sample_call = flops_per_call(
        pipe, small, demo_call_kwargs([first[0]], [first[1]], 1, settings.guidance_scale)
    )
    with flowblending(pipe, small, SCHEDULES["LSL"]) as router:
        try:
            generate_clips(
                pipe, [samples[0][0]], [samples[0][1]], settings
            )  # warm-up: both models and branches
            chunks = [
                samples[i : i + settings.chunk_size] for i in range(0, len(samples), settings.chunk_size)
            ]
            for index, chunk in enumerate(chunks):
                shift = index % len(settings.schedules)
                for name in settings.schedules[shift:] + settings.schedules[:shift]:
                    _run_chunk(pipe, router, name, chunk, settings, result)
                if progress is not None:
                    progress(len(chunk))
            result.complete = True
        except KeyboardInterrupt:
            _drop_unfinished_chunk(result)
            return result
        result.timing = _time(pipe, router, samples, settings, progress)
    return result


def _time(pipe, router, samples, settings: DemoSettings, progress=None) -> Timing:
    chunk = samples[: settings.timing_clips]
    prompts, seeds = [p for p, _ in chunk], [s for _, s in chunk]

    def run_schedule(name: str) -> None:
        router.set_schedule(SCHEDULES.get(name, name))
        generate_clips(pipe, prompts, seeds, settings)

    last = [float("-inf")]

    def said(rounds: int) -> None:  # the clips are done: say, every few seconds, that the speed is timed
        if progress is not None and time.monotonic() - last[0] >= NOTE_SECONDS:
            last[0] = time.monotonic()
            box = f"time box {settings.timing_seconds:g} s"
            progress.note(f"timing the schedules: round {rounds + 1} ({box})")

    return time_schedules(run_schedule, settings.schedules, len(chunk), settings.timing_seconds, said)


def _run_chunk(pipe, router, name: str, chunk, settings: DemoSettings, result: Generated) -> None:
    router.set_schedule(SCHEDULES.get(name, name))
    prompts, seeds = [p for p, _ in chunk], [s for _, s in chunk]
    start = time.perf_counter()
    frames = generate_clips(pipe, prompts, seeds, settings)
    elapsed = time.perf_counter() - start
    result.frames.setdefault(name, []).append(frames)
    result.seconds.setdefault(name, []).append(elapsed)
    # Per-sample calls: one batched call serves every sample of the chunk (a call an adaptive schedule split
    # by sample, the share of the chunk it ran).
    stats = router.last_run
    per_sample = {model: count * len(chunk) for model, count in stats.batch_calls_per_model.items()}
    result.calls.setdefault(name, []).append(per_sample)
    if stats.boundaries is not None:
        result.boundaries.setdefault(name, []).append(list(stats.boundaries))


def merge_ranks(parts: list[tuple[list[int], Generated]]) -> Generated:
    """One :class:`Generated` from the ranks' shares (``(sample indices, result)``), in sample order."""
    first = parts[0][1]
    merged = Generated(
        first.settings,
        [],
        flops_per_sample_call=first.flops_per_sample_call,
        complete=all(part.complete for _, part in parts),
        timing=first.timing,  # rank 0's timing: ranks share no device, each times the same way
    )
    pairs = []
    for indices, part in parts:
        done = indices[: part.done]
        pairs += [(i, part.samples[k], k, part) for k, i in enumerate(done)]
        for name in part.seconds:
            merged.seconds.setdefault(name, []).extend(part.seconds[name])
            merged.calls.setdefault(name, []).extend(part.calls[name])
        for name in part.boundaries:
            merged.boundaries.setdefault(name, []).extend(part.boundaries[name])
    pairs.sort(key=lambda p: p[0])
    merged.samples = [sample for _, sample, _, _ in pairs]
    for name in first.settings.schedules:
        merged.frames[name] = (
            [torch.stack([part.stacked(name)[k] for _, _, k, part in pairs])] if pairs else []
        )
    return merged


def _drop_unfinished_chunk(result: Generated) -> None:
    # Keep only chunks every schedule finished, so all schedules are compared on the same samples.
    finished = min(len(result.frames.get(name, [])) for name in result.settings.schedules)
    for store in (result.frames, result.seconds, result.calls, result.boundaries):
        for name in store:
            store[name] = store[name][:finished]
