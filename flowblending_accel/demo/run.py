"""``flowblending-accel demo``: LLL, LSL, LSS, SLL and SSS on the embedded pair, same prompts and noise,
scored and written as a markdown report with an animated side-by-side grid."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from ..core.distributed import DistContext, gather_ordered, joined, shard
from ..support.env import device_name, versions
from ..support.files import free_output_folder
from ..support.progress import progress
from ..support.threads import use_threads
from .classifier import load_classifier
from .data import parse_prompt, reference_clips
from .generate import DemoSettings, merge_ranks, run_comparison
from .models import CLASSIFIER_SUBFOLDER, SHIFT, default_pair_path, load_demo_pipeline
from .report import write_outputs
from .scoring import score

GRID_PROMPTS = ("a 3 moving right", "a 7 moving left", "a 0 moving up", "a 5 moving down")


def run_demo(
    settings: DemoSettings,
    output: Path,
    pair: Path | None,
    threads: int | None,
    overwrite: bool,
    command: str,
    show_progress: bool = True,
) -> tuple[Path, dict]:
    for prompt in settings.prompts:
        parse_prompt(prompt)  # a bad prompt fails here, before loading or generating anything
    governor = use_threads(threads)  # the idle usable cores unless --threads; fewer if others keep them busy
    folder = free_output_folder(output, overwrite)
    pipe, small = load_demo_pipeline(pair)
    classifier = load_classifier(Path(pair or default_pair_path()) / CLASSIFIER_SUBFOLDER)
    with joined() as ranks:  # under torchrun: samples are sharded across ranks, rank 0 reports
        generated = _generate(pipe, small, settings, ranks, show_progress)
    if not ranks.is_main:
        return folder, {}
    if generated.done == 0:
        raise KeyboardInterrupt("interrupted before the first chunk finished; nothing to report")
    rows = score(generated, classifier)
    grid = _grid_indices(generated)
    prompts = [generated.samples[i][0] for i in grid]
    columns = {"real": (reference_clips(prompts, seed=settings.base_seed + 7).clips + 1) / 2}
    columns.update({name: generated.stacked(name)[grid] for name in settings.schedules})
    context = {
        "command": command,
        "device": device_name("cpu"),
        "threads": governor.describe(),
        "ranks": ranks.world_size,
        "versions": versions(),
        "settings": {k: v for k, v in asdict(settings).items() if k != "prompts"},
        "samples": generated.done,
        "prompts": len(settings.prompts),
        "samples_per_prompt": settings.samples_per_prompt,
        "steps": settings.steps,
        "guidance_scale": settings.guidance_scale,
        "shift": SHIFT,
        "chunk_size": settings.chunk_size,
        "timing": _timing_context(generated.timing, settings.timing_seconds),
        "flops": generated.flops_per_sample_call,
        "complete": generated.complete,
    }
    write_outputs(folder, rows, context, columns, prompts)
    return folder, rows


def _generate(pipe, small, settings: DemoSettings, ranks: DistContext, show_progress: bool):
    """This rank's share of the samples, generated, then every rank's merged in order (on every rank)."""
    mine = shard(settings.samples(), ranks)
    with (
        torch.inference_mode(),
        progress("generating all schedules (clips)", len(mine), show_progress and ranks.is_main) as advance,
    ):
        part = run_comparison(pipe, small, settings, progress=advance, samples=[sample for _, sample in mine])
    parts = gather_ordered([(ranks.rank, ([i for i, _ in mine], part))], ranks)
    return merge_ranks(parts) if ranks.active else part


def _grid_indices(generated) -> list[int]:
    done = [prompt for prompt, _ in generated.samples[: generated.done]]
    chosen = [done.index(p) for p in GRID_PROMPTS if p in done]
    return chosen or list(range(min(4, len(done))))


def _timing_context(timing, seconds: float) -> dict:
    if timing is None:
        return {"rounds": 0, "clips": 0, "seconds": seconds, "other_load": None, "busy": False}
    return {
        "rounds": timing.rounds,
        "clips": timing.clips,
        "seconds": seconds,
        "other_load": timing.other_load,
        "busy": timing.busy,
    }
