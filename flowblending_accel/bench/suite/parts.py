"""Running one part: its estimate first, then each section in its own process with its own time box.

The part runner stays up whatever a section does. A section that crashes, runs out of memory, or hangs
past its box (it is stopped: SIGTERM, then SIGKILL) is recorded as a ``failed`` line with the reason, the
row in hand and its last output line; the next section still runs. SIGTERM to the part runner stops the
section in hand (which records itself as interrupted) and ends the part at once. The part ends ``done`` only
when every section did: a section that timed nothing ends ``cut short``, and a part that measured nothing
ends with what its sections ended as, never ``done`` or ``partial``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .costs import PROFILES, part_seconds, section_seconds
from .journal import FINISHED, Journal, new_run_id, read_lines
from .plan import Part, Section, Suite

GRACE_SECONDS = 15.0  # of its box, at most this long (a quarter of it) is kept for a section to end in
STOP_SECONDS = 10.0  # between SIGTERM and SIGKILL
STARTS_IN_A_BOX = 2  # a section with less than 2 process start-ups left in the part is not started
_ROW = re.compile(r"row '(.+)': running")


def estimate_lines(suite: Suite, part: Part) -> list[str]:
    """The part's estimated wall time, by section and stage, as printed before it starts."""
    profile = PROFILES[suite.name]
    try:
        total = part_seconds(suite, part.name, profile)
    except Exception as error:  # e.g. the meta-device count fails on this torch: the part still runs
        return [f"part {part.name} ({part.purpose}): no estimate here ({type(error).__name__}: {error})"]
    lines = [
        f"part {part.name} ({part.purpose}): estimated {total['total']:.0f} s of its {part.budget:.0f} s "
        f"budget on {profile.name}; install {total['install']:.0f} s"
    ]
    for section in part.sections:
        stages = section_seconds(section, suite.dtype, profile)
        detail = ", ".join(f"{name} {value:.0f} s" for name, value in stages.items() if name != "total")
        lines.append(
            f"  {section.name}: {stages['total']:.0f} s ({detail}); box {section.box:.0f} s; "
            f"{section.workload.describe()}"
        )
    return lines


class _Output(threading.Thread):
    """Echoes a section process's output, appends it to the part's log, keeps the last lines."""

    def __init__(self, stream, log: Path, echo) -> None:
        super().__init__(daemon=True)
        self.stream, self.log, self.echo, self.last = stream, log, echo, []

    def run(self) -> None:
        with open(self.log, "a", encoding="utf-8") as log:
            for line in self.stream:
                self.echo(line.rstrip("\n"))
                log.write(line)
                log.flush()
                self.last = (self.last + [line.rstrip("\n")])[-20:]

    @property
    def row(self) -> str | None:
        for line in reversed(self.last):
            found = _ROW.search(line)
            if found:
                return found.group(1)
        return None


def _resolve_prctl():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _resolve_prctl()  # resolved here: the forked child only calls it (no dlopen after fork)


def _die_with_parent() -> None:  # a section never outlives its part runner (Linux; elsewhere a no-op)
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _grace(box: float) -> float:
    return min(GRACE_SECONDS, box / 4)


def _reason(code: int | None, hung: bool, box: float, tail: list[str]) -> str:
    text = "\n".join(tail)
    if hung:
        return (
            f"did not finish within its time box ({box:.0f} s): hung, or a run far over its estimate; stopped"
        )
    if "OutOfMemoryError" in text or "CUDA out of memory" in text:
        return "CUDA out of memory"
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        if name == "SIGKILL":
            return "killed by SIGKILL (the kernel's out-of-memory killer sends it when host memory runs out)"
        return f"killed by {name}" + (" (a crash)" if name in ("SIGSEGV", "SIGABRT", "SIGBUS") else "")
    return f"exited with code {code} without recording why"


class PartRunner:
    def __init__(
        self,
        suite: Suite,
        part: Part,
        output: Path,
        resume: list[Path],
        gpu_memory: int | None = None,
        started: float | None = None,
        echo=print,
    ) -> None:
        self.suite, self.part, self.output, self.resume = suite, part, Path(output), resume
        self.gpu_memory, self.echo = gpu_memory, echo
        self.started = started if started is not None else time.time()
        self.path = self.output / f"{part.name}.jsonl"
        self.log = self.output / f"{part.name}.log"
        self.journal = Journal(self.path, suite=suite.name, part=part.name)

    def run(self) -> int:
        """Every section in order; 0 when each ended done, 1 when one did not (failed, skipped, cut short),
        143 on SIGTERM."""
        lines = estimate_lines(self.suite, self.part)
        for line in lines:
            self.echo(line)
        try:
            estimate = part_seconds(self.suite, self.part.name, PROFILES[self.suite.name])
        except Exception:
            estimate = {"total": None}
        self.journal.write("part", estimate_seconds=estimate, budget_seconds=self.part.budget, estimate=lines)
        previous = signal.signal(signal.SIGTERM, _interrupt)
        statuses: list[str] = []
        try:
            for section in self.part.sections:
                statuses.append(self._section(section))
        except KeyboardInterrupt:
            self._end("interrupted")
            return 143
        finally:
            signal.signal(signal.SIGTERM, previous)
        status = _part_status(statuses)
        self._end(status)
        return 0 if status == "done" else 1

    def _end(self, status: str) -> None:
        seconds = time.time() - self.started
        self.journal.write("part_end", status=status, seconds=round(seconds, 1))
        self.echo(f"part {self.part.name}: {status} in {seconds:.0f} s; rows in {self.path}")

    def _section(self, section: Section) -> str:
        box = min(section.box, self.started + self.part.budget - time.time())
        if box < STARTS_IN_A_BOX * PROFILES[self.suite.name].startup_seconds:
            reason = f"the part's {self.part.budget:.0f} s budget was spent before this section"
            self.journal.write("skipped", section=section.name, reason=reason)
            return "skipped"
        run = new_run_id()
        command = [
            sys.executable,
            "-m",
            "flowblending_accel.bench.suite.worker",
            *("--suite", self.suite.name, "--part", self.part.name, "--section", section.name),
            # The section stops starting rows a grace before its box ends, so it ends inside the part.
            *(
                "--journal",
                str(self.path),
                "--run",
                run,
                "--deadline",
                f"{time.time() + box - _grace(box):.3f}",
            ),
            *(["--resume", *map(str, self.resume)] if self.resume else []),
            *(["--gpu-memory", str(self.gpu_memory)] if self.gpu_memory else []),
        ]
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environment,
            preexec_fn=_die_with_parent,
        )
        output = _Output(process.stdout, self.log, self.echo)
        output.start()
        hung = False
        try:
            code = process.wait(timeout=box)
        except subprocess.TimeoutExpired:
            hung, code = True, _stop(process)
        except KeyboardInterrupt:
            _stop(process)
            output.join(timeout=5)
            self._record_unfinished(section, run, None, False, box, output, interrupted=True)
            raise
        output.join(timeout=5)
        return self._record_unfinished(section, run, code, hung, box, output)

    def _record_unfinished(
        self, section, run, code, hung, box, output: _Output, interrupted: bool = False
    ) -> str:
        """The section's status; a line for it when its process ended without writing its own last one."""
        mine = [line for line in read_lines([self.path]) if line.get("run") == run]
        last = next((line for line in reversed(mine) if line["kind"] in FINISHED), None)
        if last is not None and not hung:
            status = last.get("status", "done") if last["kind"] == "section_end" else last["kind"]
            if status != "done":
                self.echo(f"section {section.name}: {status}: {last.get('reason', 'see its lines')}")
            return status
        fields: dict[str, Any] = dict(
            section=section.name, run=run, row=output.row, last_output=output.last[-3:]
        )
        if interrupted:
            self.journal.write("interrupted", reason="the part runner was stopped (SIGTERM)", **fields)
            return "interrupted"
        self.journal.write("failed", reason=_reason(code, hung, box, output.last), exit_code=code, **fields)
        return "failed"


def _part_status(statuses: list[str]) -> str:
    """``done`` when every section ended done, ``partial`` when some did, else what they ended as."""
    if all(status == "done" for status in statuses):
        return "done"
    return "partial" if "done" in statuses else ", ".join(dict.fromkeys(statuses))


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _stop(process: subprocess.Popen) -> int | None:
    process.terminate()
    try:
        return process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
