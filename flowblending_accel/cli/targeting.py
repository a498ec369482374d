"""The target options every tool command shares, and the one place they are resolved (flags over the
config file over each target's defaults). Declaring them imports no torch."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..targets.options import SETTINGS, flag
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


TARGET_FLAGS = tuple(SETTINGS)
ARGUMENT_TYPES = {"text": None, "whole": whole_number(1), "positive": positive_number}


def add_target_options(parser: argparse.ArgumentParser, prompts: bool = True) -> None:
    """One flag per declared target setting (:mod:`flowblending_accel.targets.options`), and ``--config``."""
    group = parser.add_argument_group("target", TARGET_HELP)
    for name, setting in SETTINGS.items():
        if setting.with_prompts and not prompts:
            continue
        declared = {
            "metavar": setting.metavar,
            "choices": setting.choices,
            "type": ARGUMENT_TYPES[setting.value],
        }
        given = {key: value for key, value in declared.items() if value is not None}
        group.add_argument(flag(name), default=None, help=setting.help, **given)
        if name == "pair":  # the settings file comes with the target: it may name one
            group.add_argument(
                "--config",
                type=Path,
                default=None,
                help="settings file (default: flowblending.toml or "
                "pyproject.toml's [tool.flowblending] in the working folder)",
            )


def target_settings(args: argparse.Namespace):
    """``(TargetOptions, Config)`` from the flags and the config file; the device is checked here."""
    from ..targets.config import find_config
    from ..targets.options import TargetOptions
    from ..targets.resolve import check_tuned_for
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
