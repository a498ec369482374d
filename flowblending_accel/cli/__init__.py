"""``flowblending-accel``: FlowBlending for diffusers pipelines, from the command line.

Each command is a module of this package with a ``register(commands)`` that declares its options (importing
no torch, so ``--help`` is instant) and a ``run(args)`` that imports what it needs. ``main`` parses,
records the command line and sends every user error down one path: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from .. import __version__
from ..support.env import quiet_optional_libraries, require_extra
from . import analysis, bench, check, demo, plan, tiny, tune
from .common import OneLineParser, run_command, showing_library_notes

DESCRIPTION = """\
FlowBlending: the large model denoises the early and the late stage of the trajectory, a small model of
the same family the middle ("L40-S40-L20"). These commands plan, run and measure it.

commands:
  demo          compare LLL, LSL, LSS, SLL, SSS on the embedded trained pair: report + grid (the main job)
  bench         baseline, +FlowBlending, +step reduction, +cache, +compile ... measured in one run
  analyze       velocity divergence between the two models along the trajectory (and what predicts harm)
  calibrate     choose stage boundaries automatically under a quality tolerance or FLOP budget
  tune          tune boundaries, step count and cache threshold jointly under a tolerance or a budget
  check         CI gate: fail a change that regresses routing, FLOPs, recompiles, caching or speedup
  plan          print which model runs each solver step for a schedule and a scheduler
  tiny          route a tiny random-weight pipeline on the CPU and print what happened (or --save it)
  train-demo    train the embedded pair (resumable) or, with --classifier, its metrics classifier
  export-demo   write a training checkpoint as a diffusers pipeline folder
"""

PROG = "flowblending-accel"
COMMAND_MODULES = (demo, bench, analysis, tune, check, plan, tiny)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        usage="flowblending-accel [-h] [--version] COMMAND ...",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"flowblending-accel {__version__}")
    # The commands are listed once, in the description above (one line each, in the order to read them).
    # prog: a command's errors and help name it as typed (`flowblending-accel bench`), not the usage line.
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", help=argparse.SUPPRESS, prog=PROG, parser_class=OneLineParser
    )
    for module in COMMAND_MODULES:
        module.register(commands)
    parser.set_defaults(command_parsers=commands.choices)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse; an unknown flag is reported by the command it was given to, pointing to that command's help."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        owner = args.command_parsers.get(args.command, parser) if args.command else parser
        owner.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    # What the command shows: the library's notes, and not the optional libraries' import noise.
    with quiet_optional_libraries(), showing_library_notes():
        return _main(list(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = _parse(parser, argv)
    except SystemExit as exit_:  # --help, --version (0) and usage errors (2): a code, not an exception
        return int(exit_.code or 0)
    if args.command is None:
        parser.print_help()
        return 0
    args.command_line = "flowblending-accel " + shlex.join(argv)
    return run_command(f"{PROG} {args.command}", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    extra = getattr(args, "extra", None)  # the optional packages the command's pipelines need
    if extra:
        require_extra(extra, f"{PROG} {args.command}")
    return args.run(args)
