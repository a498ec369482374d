"""The target options every tool command shares, and the one place they are resolved (flags over the
config file over each target's defaults). Declaring them imports no torch."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..accelerators.configs import OFFLOAD_MODES
from .common import positive_number, whole_number

TARGET_HELP = """\
what to run on (one of):
  --target embedded            the trained pair shipped in the package (default; offline)
  --target random:PRESET       random weights at real size (wan2.1-14b+1.3b, wan2.2-a14b, ltx-13b+2b) or tiny
                               (tiny-wan, tiny-wan2.2, tiny-ltx): speed and counts, no quality
  --large FOLDER --small FOLDER  a diffusers pipeline folder (or hub id) and the small denoiser's
                               folder (a bare model folder, or a pipeline folder holding it)
  --target FILE.py:FACTORY     your own code returns the pipeline, the small model and the call arguments
  --target MODULE:FACTORY      (see flowblending_accel.targets.factory)
settings not given on the command line come from flowblending.toml or [tool.flowblending] in pyproject.toml
"""


TARGET_FLAGS = (
    "target",
    "large",
    "small",
    "pair",
    "device",
    "dtype",
    "height",
    "width",
    "frames",
    "steps",
    "guidance_scale",
    "negative_prompt",
    "prompts",
    "offload",
    "gpu_memory",
)


def add_target_options(parser: argparse.ArgumentParser, prompts: bool = True) -> None:
    group = parser.add_argument_group("target", TARGET_HELP)
    group.add_argument(
        "--target", default=None, metavar="SPEC", help="embedded, random:PRESET, FILE.py:FACTORY ..."
    )
    group.add_argument(
        "--large", default=None, metavar="FOLDER", help="pipeline folder or hub id (with --small)"
    )
    group.add_argument(
        "--small", default=None, metavar="FOLDER", help="the small denoiser's folder or hub id"
    )
    group.add_argument(
        "--pair", default=None, metavar="FOLDER", help="another demo-pair folder for the embedded target"
    )
    group.add_argument(
        "--config",
        type=Path,
        default=None,
        help="settings file (default: flowblending.toml or "
        "pyproject.toml's [tool.flowblending] in the working folder)",
    )
    group.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default cpu)")
    group.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "bfloat16", "float16"),
        help="weights dtype (default: bfloat16 on CUDA, float32 on CPU; the embedded pair float32)",
    )
    group.add_argument(
        "--offload",
        default=None,
        choices=OFFLOAD_MODES,
        help="memory mode on a GPU (default none: all resident): model, group or sequential CPU offload; "
        "the pipeline is loaded on the CPU and never moved whole to the GPU",
    )
    group.add_argument(
        "--gpu-memory",
        default=None,
        metavar="SIZE",
        help="refuse, before loading, a memory mode whose estimated peak does not fit SIZE (e.g. 24GiB) "
        "instead of the GPU's own memory",
    )
    group.add_argument("--height", type=whole_number(1), default=None, help="pixels (the target's default)")
    group.add_argument("--width", type=whole_number(1), default=None, help="pixels (the target's default)")
    group.add_argument(
        "--frames", type=whole_number(1), default=None, help="video frames (video pipelines only)"
    )
    group.add_argument(
        "--steps", type=whole_number(1), default=None, help="solver steps (the target's default)"
    )
    group.add_argument(
        "--guidance-scale",
        type=positive_number,
        default=None,
        help="the call's guidance_scale (CFG scale; Flux: its distilled guidance)",
    )
    group.add_argument("--negative-prompt", default=None, help="negative prompt for every call")
    if prompts:
        group.add_argument(
            "--prompts",
            default=None,
            metavar="FILE",
            help="prompts: one a line, or JSONL with per-prompt call arguments (negative_prompt, "
            "height, num_frames, image ...)",
        )


def target_settings(args: argparse.Namespace):
    """``(TargetOptions, Config)`` from the flags and the config file; the device is checked here."""
    from ..targets.config import find_config
    from ..targets.resolve import TargetOptions, check_tuned_for
    from .common import resolve_device

    config = find_config(args.config)
    flags: dict[str, Any] = {name: getattr(args, name, None) for name in TARGET_FLAGS}
    options = TargetOptions.merged(flags, config.values)
    check_tuned_for(options, config.get("tuned_for"), config.source)
    resolve_device(options.device)
    return options, config


def setting(args: argparse.Namespace, config, name: str, default: Any = None) -> Any:
    """A tool setting (schedule, stack, scorers, seeds): the flag, else the config file, else ``default``."""
    value = getattr(args, name, None)
    if value is not None:
        return value
    return config.get(name, default)
