"""What every recipe's command line shares (public API only): options, a checked output path, the run,
the optional large-only baseline beside it, and an atomic write of the video or image."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowblending_accel import flowblending_stats
from flowblending_accel.accelerators import (
    OFFLOAD_MODES,
    applied_stack,
    enable_offload,
    flowblending,
    parse_accelerator,
    spec_help,
)
from flowblending_accel.cli.common import positive_number, whole_number
from flowblending_accel.core.distributed import DistContext, joined, launched_world_size
from flowblending_accel.core.schedule import PAPER_SCHEDULE
from flowblending_accel.metrics import psnr, ssim
from flowblending_accel.support.files import check_output_folder, default_file_mode
from flowblending_accel.support.threads import use_threads


@dataclass(frozen=True)
class Defaults:
    """A recipe's defaults: its models, schedule and stack, and the size and steps its checkpoints use."""

    pipeline: str
    small: str
    height: int
    width: int
    frames: int | None  # None: an image pipeline
    steps: int
    guidance: float
    fps: int = 16
    schedule: str = PAPER_SCHEDULE
    stack: tuple[str, ...] = ()
    output: str = "flowblending.mp4"
    context_parallel: bool = True  # whether the models can split a sample across GPUs (diffusers' cp plan)


def parser(description: str, defaults: Defaults) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = defaults
    p.add_argument("--pipeline", default=d.pipeline, help=f"pipeline folder or hub id (default {d.pipeline})")
    p.add_argument("--small", default=d.small, help=f"small model folder or hub id (default {d.small})")
    p.add_argument("--schedule", default=d.schedule, help=f"FlowBlending stages (default {d.schedule})")
    p.add_argument("--stack", nargs="*", default=list(d.stack), help=f"accelerators: {spec_help()}")
    p.add_argument("--prompt", default="A polar bear playing guitar")
    p.add_argument("--negative-prompt", default=None, help="negative prompt (default: the pipeline's)")
    p.add_argument("--height", type=whole_number(1), default=d.height)
    p.add_argument("--width", type=whole_number(1), default=d.width)
    if d.frames is not None:
        p.add_argument("--frames", type=whole_number(1), default=d.frames)
    p.add_argument(
        "--steps",
        type=whole_number(1),
        default=d.steps,
        help="solver steps (a step reduction in --stack sets its own)",
    )
    p.add_argument("--guidance-scale", type=positive_number, default=d.guidance)
    p.add_argument("--seed", type=whole_number(0), default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument(
        "--threads",
        type=whole_number(1),
        default=None,
        help="torch CPU threads (default: the usable cores that are idle at the start)",
    )
    p.add_argument(
        "--offload",
        choices=OFFLOAD_MODES,
        default="none",
        help="memory mode: model (diffusers' model CPU offload; the small model follows), group (a block at "
        "a time, the next one prefetched; the small model prefetched before its stage), sequential (a layer "
        "at a time, the slowest); the pipeline is loaded on the CPU and never moved whole to the GPU "
        "(memory of each mode: the docstring and `flowblending-accel plan --memory`)",
    )
    if d.context_parallel:
        p.add_argument(
            "--context-parallel",
            type=whole_number(2),
            default=None,
            metavar="N",
            help="split each video across N GPUs (Ulysses context parallelism, both models; launch with "
            "torchrun --nproc_per_node N; the degree must divide both models' attention heads): rank 0 "
            "writes the output",
        )
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also run the large model alone and print the speedup and quality side by side",
    )
    p.add_argument("--output", type=Path, default=Path(d.output), help=f"output file (default {d.output})")
    return p


def run(
    args: argparse.Namespace,
    load: Callable[..., tuple[Any, Any, list[str]]],
    defaults: Defaults,
    **router_options: Any,
) -> dict[str, Any]:
    """Load (on the CPU, then on the device in the --offload mode), (baseline,) route and write; returns what
    it measured. Under torchrun with --context-parallel N every rank runs and rank 0 writes."""
    degree = getattr(args, "context_parallel", None)
    parallel = [parse_accelerator(f"cp:{degree}")] if degree else []
    for config in parallel:  # one process, or a degree that does not fit the launch: before any loading
        config.check_environment(args.device)
        if launched_world_size() != degree:  # one video: more processes would each make the same one
            raise ValueError(
                f"--context-parallel {degree} under {launched_world_size()} processes: launch torchrun "
                f"--nproc_per_node {degree} (one video is split across exactly {degree})."
            )
    with joined() if parallel else nullcontext(DistContext()) as ranks:  # rank 0 writes
        return _run(args, load, defaults, parallel, ranks, **router_options)


def _run(args, load, defaults: Defaults, parallel: list, ranks: DistContext, **router_options: Any) -> dict:
    if ranks.is_main:
        check_output_folder(args.output.parent, "--output")
    use_threads(args.threads)
    pipe, small, members = load(
        args.pipeline, args.small, device=args.device, dtype=getattr(torch, args.dtype), offload=args.offload
    )
    stack = list(args.stack) + members + parallel
    result: dict[str, Any] = {}
    if args.baseline:
        result["baseline"] = _generate(pipe, args, defaults)
    with flowblending(pipe, small, args.schedule, stack, **router_options):
        applied = applied_stack(pipe)
        result["routed"] = _generate(pipe, args, defaults, without=applied.call_kwargs())
        result["stats"] = flowblending_stats(pipe)
    if not ranks.is_main:
        return result
    print(result["stats"].table())
    _write(result["routed"][0], args.output, defaults)
    if args.baseline:
        _compare(result["baseline"], result["routed"])
    print(f"written to {args.output}")
    return result


def load_pipeline(cls, path: str, device: str, dtype: torch.dtype, offload: str, **components):
    """The pipeline loaded on the CPU, then put on ``device`` in memory mode ``offload`` (in an offload mode
    it is never moved whole to the device); returns it and the stack members the mode asks for."""
    pipe = cls.from_pretrained(path, dtype=dtype, **components)
    return pipe, enable_offload(pipe, device, offload)


def load_denoiser(cls, path: str, attribute: str, dtype: torch.dtype, device: str, offload: str = "none"):
    """A denoiser from a bare model folder, a pipeline folder (its ``attribute`` subfolder) or a hub id; in an
    offload mode it stays on the CPU (it follows the large model, or the offload mode prefetches it)."""
    folder = Path(path)
    bare = folder.is_dir() and (folder / "config.json").exists() and not (folder / attribute).is_dir()
    kwargs = {} if bare else {"subfolder": attribute}
    model = cls.from_pretrained(path, dtype=dtype, **kwargs).eval()
    return model.to(device) if offload == "none" else model


def _generate(pipe, args, defaults: Defaults, without: dict | None = None) -> tuple[np.ndarray, float]:
    kwargs = dict(
        prompt=args.prompt,
        height=args.height,
        width=args.width,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        output_type="np",
        generator=torch.Generator(args.device).manual_seed(args.seed),
    )
    if args.negative_prompt is not None:
        kwargs["negative_prompt"] = args.negative_prompt
    if defaults.frames is not None:
        kwargs["num_frames"] = args.frames
    kwargs = {k: v for k, v in kwargs.items() if k not in (without or {})}  # the stack owns those
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    output = pipe(**kwargs)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return (output.frames if defaults.frames is not None else output.images), seconds


def _compare(baseline: tuple[np.ndarray, float], routed: tuple[np.ndarray, float]) -> None:
    a, b = torch.as_tensor(np.asarray(routed[0])).float(), torch.as_tensor(np.asarray(baseline[0])).float()
    if a.dim() == 4:  # images (B, H, W, C): one frame each
        a, b = a[:, None], b[:, None]
    quality = (float(psnr(a, b, layout="BFHWC").mean()), float(ssim(a, b, layout="BFHWC").mean()))
    print(
        f"large only: {baseline[1]:.2f} s; FlowBlending + stack: {routed[1]:.2f} s; speedup "
        f"{baseline[1] / routed[1]:.2f}x (one run each, not interleaved: `flowblending-accel bench` measures "
        f"ratios); vs large only: PSNR {quality[0]:.2f} dB, SSIM {quality[1]:.4f}"
    )


def _write(output: np.ndarray, path: Path, defaults: Defaults) -> None:
    """Write the first video or image to a temporary sibling, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(handle)
    try:
        if defaults.frames is not None:
            from diffusers.utils import export_to_video

            export_to_video(list(output[0]), temporary, fps=defaults.fps)
        else:
            from PIL import Image

            Image.fromarray((np.asarray(output[0]) * 255).round().astype("uint8")).save(temporary)
        os.chmod(temporary, default_file_mode())
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
