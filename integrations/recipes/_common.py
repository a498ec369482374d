"""What every recipe's command line shares (public API only): options, a checked output path, the run,
the optional large-only baseline beside it, and an atomic write of the video or image."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowblending_accel.accelerators import (
    OFFLOAD_MODES,
    enable_offload,
    parse_accelerator,
    spec_help,
)
from flowblending_accel.cli.common import positive_number, run_command, whole_number
from flowblending_accel.core.diffusers_versions import dtype_kwargs
from flowblending_accel.core.distributed import DistContext, joined, launched_world_size
from flowblending_accel.core.schedule import PAPER_SCHEDULE
from flowblending_accel.metrics import psnr, ssim
from flowblending_accel.support.env import quiet_optional_libraries
from flowblending_accel.support.files import check_output_folder, default_file_mode
from flowblending_accel.support.threads import use_threads
from flowblending_accel.targets.sizes import describe, resolve_folder_size

# What diffusers' export_to_video writes (imageio with its ffmpeg plugin; GIF through imageio's own).
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".gif"}


@dataclass(frozen=True)
class Defaults:
    """A recipe's defaults: its models, schedule and stack, and the size and steps its checkpoints use."""

    large: str
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

    def size(self) -> dict[str, int]:
        """The call's size arguments the checkpoints were made for."""
        size = {"height": self.height, "width": self.width, "num_inference_steps": self.steps}
        return size if self.frames is None else {**size, "num_frames": self.frames}


def parser(description: str, defaults: Defaults) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = defaults
    p.add_argument("--large", default=d.large, help=f"pipeline folder or hub id (default {d.large})")
    p.add_argument("--pipeline", dest="large", help=argparse.SUPPRESS)  # the name before --large
    p.add_argument("--small", default=d.small, help=f"small model folder or hub id (default {d.small})")
    p.add_argument("--schedule", default=d.schedule, help=f"FlowBlending stages (default {d.schedule})")
    p.add_argument("--stack", nargs="*", default=list(d.stack), help=f"accelerators: {spec_help()}")
    p.add_argument("--prompt", default="A polar bear playing guitar")
    p.add_argument("--negative-prompt", default=None, help="negative prompt (default: the pipeline's)")
    where = "the folder's flowblending_defaults.json, else"
    p.add_argument("--height", type=whole_number(1), help=f"pixels (default: {where} {d.height})")
    p.add_argument("--width", type=whole_number(1), help=f"pixels (default: {where} {d.width})")
    if d.frames is not None:
        p.add_argument("--frames", type=whole_number(1), help=f"video frames (default: {where} {d.frames})")
    p.add_argument(
        "--steps",
        type=whole_number(1),
        help=f"solver steps (default: {where} {d.steps}; a step reduction in --stack sets its own)",
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
    p.add_argument(
        "--output",
        type=Path,
        default=Path(d.output),
        help=f"output file (default {d.output}; without a suffix, {Path(d.output).suffix} is added)",
    )
    return p


def script(main: Callable[[], Any]) -> int:
    """A recipe run as a script: a user error (bad option, folder, size or output) is one line on stderr
    and exit 2, as with the flowblending-accel commands."""
    with quiet_optional_libraries():
        return run_command(f"python {sys.argv[0]}", lambda: (main(), 0)[1])


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
    from flowblending_accel import flowblending_stats  # these import diffusers: after the user's errors
    from flowblending_accel.accelerators import FlowBlendingConfig, applied_stack, flowblending

    if ranks.is_main:
        args.output = checked_output(args.output, defaults)
    size = _size(args, defaults)  # refused here, before any weight is read, if the models cannot take it
    use_threads(args.threads)
    pipe, small, members = load(
        args.large, args.small, device=args.device, dtype=getattr(torch, args.dtype), offload=args.offload
    )
    stack = list(args.stack) + members + parallel
    result: dict[str, Any] = {}
    if args.baseline:
        result["baseline"] = _generate(pipe, args, size, defaults)
    with flowblending(pipe, small, FlowBlendingConfig(args.schedule, accelerators=stack, **router_options)):
        applied = applied_stack(pipe)
        result["routed"] = _generate(pipe, args, size, defaults, without=applied.call_kwargs())
        result["stats"] = flowblending_stats(pipe)
    if not ranks.is_main:
        return result
    print(result["stats"].table())
    _write(result["routed"][0], args.output, defaults)
    if args.baseline:
        _compare(result["baseline"], result["routed"])
    print(f"written to {args.output}")
    return result


def _size(args, defaults: Defaults) -> dict[str, int]:
    """The size and step count to run at, resolved as the tools do (given, else the folder's recorded
    size, else the recipe's), checked against local folders' models on the meta device."""
    given = {"height": args.height, "width": args.width, "num_inference_steps": args.steps}
    if defaults.frames is not None:
        given["num_frames"] = args.frames
    given = {name: value for name, value in given.items() if value is not None}
    fallback = ("the recipe's defaults", defaults.size())
    size, source = resolve_folder_size(args.large, args.small, given, args.dtype, args.prompt, fallback)
    print(f"size: {describe(size)} ({source})", file=sys.stderr)
    return size


def checked_output(path: Path, defaults: Defaults) -> Path:
    """The output path, checked before any model loads: its folder writable, its suffix one the writer
    takes (none: the default's is added), the video writer installed."""
    suffix = Path(defaults.output).suffix
    if path.is_dir():
        raise ValueError(f"--output {path}: a folder; name the file to write, e.g. {path / defaults.output}.")
    if not path.suffix:
        print(f"--output {path}: no suffix, writing {path.with_suffix(suffix)}", file=sys.stderr)
        path = path.with_suffix(suffix)
    known = VIDEO_SUFFIXES if defaults.frames is not None else _image_suffixes()
    if path.suffix.lower() not in known:
        raise ValueError(f"--output {path}: {path.suffix} is not a format this recipe writes; use {suffix}.")
    if defaults.frames is not None:
        for module in ("imageio", "imageio_ffmpeg"):
            if importlib.util.find_spec(module) is None:
                raise ValueError(
                    f"--output {path}: writing video needs {module}; pip install 'flowblending-accel[video]'."
                )
    check_output_folder(path.parent, "--output")
    return path


def _image_suffixes() -> set[str]:
    from PIL import Image

    return {suffix for suffix, format_ in Image.registered_extensions().items() if format_ in Image.SAVE}


def load_pipeline(cls, path: str, device: str, dtype: torch.dtype, offload: str, **components):
    """The pipeline loaded on the CPU, then put on ``device`` in memory mode ``offload`` (in an offload mode
    it is never moved whole to the device); returns it and the stack members the mode asks for."""
    pipe = cls.from_pretrained(path, **dtype_kwargs(dtype), **components)
    return pipe, enable_offload(pipe, device, offload)


def load_denoiser(cls, path: str, attribute: str, dtype: torch.dtype, device: str, offload: str = "none"):
    """A denoiser from a bare model folder, a pipeline folder (its ``attribute`` subfolder) or a hub id; in an
    offload mode it stays on the CPU (it follows the large model, or the offload mode prefetches it)."""
    folder = Path(path)
    bare = folder.is_dir() and (folder / "config.json").exists() and not (folder / attribute).is_dir()
    kwargs = {} if bare else {"subfolder": attribute}
    model = cls.from_pretrained(path, **dtype_kwargs(dtype), **kwargs).eval()
    return model.to(device) if offload == "none" else model


def _generate(pipe, args, size, defaults: Defaults, without: dict | None = None) -> tuple[np.ndarray, float]:
    kwargs = dict(
        prompt=args.prompt,
        **size,
        guidance_scale=args.guidance_scale,
        output_type="np",
        generator=torch.Generator(args.device).manual_seed(args.seed),
    )
    if args.negative_prompt is not None:
        kwargs["negative_prompt"] = args.negative_prompt
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
