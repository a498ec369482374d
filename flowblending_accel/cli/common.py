"""What every command shares: the one error -> exit path and device resolution. (``main`` records the
command line as ``args.command_line`` for the results each command writes.)"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

EXIT_OK, EXIT_USAGE = 0, 2

# What a user can cause: bad arguments or files. They end as one line and exit 2, never a traceback.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, FileExistsError, PermissionError)


def run_command(prog: str, run: Callable[[], int]) -> int:
    """Run a command; a user error prints ``PROG: error: ...`` on stderr (PROG as typed, e.g.
    ``flowblending-accel bench``) and exits 2; a run SIGTERM stopped says how to resume it (rank 0 under
    torchrun) and exits 143."""
    from ..support.stopping import EXIT_INTERRUPTED, Interrupted

    try:
        return run()
    except Interrupted as stopped:
        if os.environ.get("RANK", "0") == "0":
            print(f"{prog}: {stopped}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`| head`): what it wanted was printed
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return EXIT_OK
    except USER_ERRORS as error:
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return EXIT_USAGE


@contextmanager
def showing_library_notes() -> Iterator[None]:
    """While a command runs, what the package's modules log (``logging.getLogger(__name__)``, INFO and up) is
    shown on stderr as plain lines: the library decides what to say, the command line that it is shown.
    Under torchrun the other ranks show warnings and up only: rank 0 says the plan and the estimates once."""
    logger = logging.getLogger(__name__.partition(".")[0])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def resolve_device(device: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``, checked against this machine's torch before any model is built."""
    import torch

    if device == "cpu":
        return device
    if not device.startswith("cuda"):
        raise ValueError(f"--device {device!r}: use 'cpu', 'cuda' or 'cuda:N'.")
    if not torch.cuda.is_available():
        raise ValueError(
            f"--device {device}: this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu, "
            "or install a CUDA build of torch on a machine with a GPU."
        )
    return device


def whole_number(minimum: int = 1) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _number(text: str, above_zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if value < 0 or (above_zero and value == 0):
        raise argparse.ArgumentTypeError(f"must be {'above 0' if above_zero else '0 or more'}, got {text}")
    return value


def adaptive_window(text: str):
    """An adaptive schedule whose threshold a fit will set (``L20:60-S-L20``), parsed where it enters."""
    from ..core.schedule import Schedule

    try:
        return Schedule.adaptive_window(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def positive_number(text: str) -> float:
    """An argparse type: a number above 0."""
    return _number(text, above_zero=True)


def non_negative_number(text: str) -> float:
    """An argparse type: a number of at least 0."""
    return _number(text, above_zero=False)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``prog: error: ...``) and exit 2, like every other error."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}; see `{self.prog} --help`.\n")


def add_threads_option(parser) -> None:
    parser.add_argument(
        "--threads",
        type=whole_number(1),
        default=None,
        help="torch CPU threads (default: the usable cores that are idle at the start, lowered when other "
        "processes keep cores busy; a number given here is kept)",
    )
