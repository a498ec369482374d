"""One section of the suite, in its own process (the part runner starts it with a time box):

    python -m flowblending_accel.bench.suite.worker --suite gpu --section wan --journal OUT/wan.jsonl \\
        --run ID --deadline EPOCH [--resume DIR ...] [--gpu-memory BYTES]

It writes a line to the part file for everything it measures, as soon as it is measured; a row starts only
if its expected time (its last run, else the cost model scaled by how the section's runs compared with it)
fits before the deadline; SIGTERM stops it at once. Rows measured earlier under the same fingerprint (in
``--resume`` part files or the journal itself) are not measured again.

Every row (or pair) it does not measure, or stops measuring, gets a line with the reason: refused, failed,
out of time, or left without its baseline. A section that timed nothing in this run (no row beside the
baseline, no pair) ends ``cut short``, never ``done``. Exit status: 0 when the section ended done, 1 when it
ended otherwise (cut short, skipped, failed), 143 on SIGTERM.

``FLOWBLENDING_SUITE_FAULT=hang|crash|oom:<section>/<row label>[;...]`` injects faults as the section reaches
those rows, and ``late:<section>`` starts the section with its box spent: the rehearsal checks with them
that hangs, crashes, out-of-memory errors and a section that measured nothing are recorded.
"""

from __future__ import annotations

import argparse
import gc
import signal
import sys
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...support.env import quiet_optional_libraries
from .costs import PROFILES, memory_refusal, row_memory, row_seconds, warmup_extra_seconds
from .guard import Clock, Progress, fault_deadline, inject_fault
from .journal import (
    Journal,
    fingerprint,
    first_not_measured,
    read_lines,
    rows_measured,
    section_finished,
    section_setup,
)
from .plan import BASELINE, Section, Suite, SuiteRow, suite_named

if TYPE_CHECKING:  # measuring imports torch and diffusers: in main, after the import noise is silenced
    from .measure import RowState


@dataclass
class Context:
    suite: Suite
    section: Section
    journal: Journal
    clock: Clock
    progress: Progress
    resume: list[Path]
    gpu_memory: int | None
    setup: dict[str, Any] = field(default_factory=dict)


def _target(ctx: Context):
    import torch

    from ...targets.presets import preset_target

    height, width, frames = ctx.section.workload.size
    ctx.progress.say(f"building {ctx.section.workload.describe()} on {ctx.suite.device}")
    return preset_target(
        ctx.section.workload.preset,
        ctx.suite.device,
        getattr(torch, ctx.suite.dtype),
        height,
        width,
        frames,
        ctx.section.workload.steps,
    )


def _box_reason(ctx: Context, expected: float, what: str) -> str:
    return (
        f"time box: {max(ctx.clock.left(), 0):.0f} s of the section's {ctx.section.box:.0f} s were left and "
        f"{what} needs about {expected:.1f} s"
    )


def _end(ctx: Context, status: str, **fields: Any) -> str:
    ctx.journal.write("section_end", status=status, **fields)
    return status


def _cut_short(ctx: Context, what: str) -> str:
    """The end of a section that timed nothing in this run, never ``done``; it names the first thing it
    did not measure, the cause of the rest as a rule."""
    return _end(ctx, "cut short", reason=f"{what} in this run{first_not_measured(ctx.journal.this_run())}")


# ---- smoke and overhead: pairs of unwrapped and routed runs -------------------------------------------


def _pairs(ctx: Context, warmup: int) -> int:
    from ..overhead import overhead_pairs

    if ctx.clock.left() <= 0:  # no pair can be timed inside the box: build nothing, start none
        reason = f"time box: the section's {ctx.section.box:.0f} s were spent before its first pair"
        ctx.journal.write("skipped", reason=reason, pairs=0, planned=ctx.section.repeats)
        return 0
    target, written = _target(ctx), 0
    ctx.progress.say(f"{warmup} warm-up pairs, then {ctx.section.repeats} timed pairs")
    for index, pair in enumerate(overhead_pairs(target, ctx.section.repeats, warmup)):
        ctx.journal.write("pair", round=index + 1, **pair)
        written += 1
        last = pair["unwrapped_seconds"] + pair["routed_seconds"]
        if written < ctx.section.repeats and not ctx.clock.fits(last):
            reason = _box_reason(ctx, last, "the next pair")
            ctx.journal.write("skipped", reason=reason, pairs=written, planned=ctx.section.repeats)
            break
    return written


def run_smoke(ctx: Context) -> str:
    return _end_pairs(ctx, _pairs(ctx, warmup=1))


def run_overhead(ctx: Context) -> str:
    from ..overhead import isolated_router_cost

    written = _pairs(ctx, warmup=3)
    if written:
        ctx.progress.say("the router alone over a null denoiser (CPU time)")
        isolated = isolated_router_cost(ctx.section.repeats * 5, 20)
        ctx.journal.write("overhead", isolated=isolated)
    return _end_pairs(ctx, written)


def _end_pairs(ctx: Context, written: int) -> str:
    return _end(ctx, "done") if written else _cut_short(ctx, "no pair was timed")


# ---- rows: interleaved rounds against the large-only baseline -----------------------------------------


def _drop_row(ctx: Context, state: RowState, kind: str, reason: str, **extra: Any) -> None:
    state.dropped = True
    ctx.journal.write(kind, row=state.row.label, reason=reason, **extra)


def _refusal(ctx: Context, row: SuiteRow, backend: str) -> str | None:
    """Why ``row`` cannot run here (a member this machine lacks, or memory it would not fit), or None."""
    from ...support.memory import host_total_bytes

    for config in row.configs(backend):
        try:
            config.check_environment(ctx.suite.device)
        except ValueError as error:
            return str(error)
    try:
        need = row_memory(row, ctx.section.workload, ctx.suite.dtype)
    except Exception as error:  # the cost model could not count this workload here: measure, do not guess
        print(f"[{ctx.section.name}] no memory estimate for '{row.label}' ({error})", flush=True)
        return None
    on_gpu = ctx.suite.device.startswith("cuda")
    # --gpu-memory stands in for the device's own (on a CPU rehearsal too, which then checks it as a GPU's)
    total = ctx.gpu_memory or (ctx.setup["details"].get("memory_gib", 0) * 2**30 if on_gpu else None)
    return memory_refusal(need, total, host_total_bytes() or 0, on_gpu)


def _earlier(ctx: Context) -> list[dict[str, Any]]:
    """Lines of earlier runs: the ``--resume`` part files and this part file itself."""
    return list(read_lines([*ctx.resume, *([ctx.journal.path] if ctx.journal.path.exists() else [])]))


def _rows_wanted(ctx: Context) -> list[SuiteRow]:
    """The rows this run owes (the baseline first, to pair with), after those measured earlier."""
    print_ = ctx.journal.base["fingerprint"]
    done = rows_measured(_earlier(ctx), ctx.section.name, print_, ctx.section.repeats)
    wanted = [row for row in ctx.section.measured_rows if row.label not in done]
    if wanted and BASELINE not in wanted:  # new rows pair with a baseline timed in the same process
        wanted.insert(0, BASELINE)
    ctx.journal.write(
        "section",
        rows=[row.label for row in ctx.section.measured_rows],
        measured_earlier=sorted(done),
        box_seconds=ctx.section.box,
    )
    return wanted


def _runnable(ctx: Context, wanted: list[SuiteRow], backend: str) -> list[SuiteRow]:
    runnable = []
    for row in wanted:
        reason = _refusal(ctx, row, backend)
        if reason is None:
            runnable.append(row)
        else:
            ctx.journal.write("skipped", row=row.label, reason=reason)
    return runnable


def _estimate(ctx: Context, row: SuiteRow, warm: bool, scaled: bool = True) -> float:
    """The cost model's time for a run of ``row`` (its warm-up adds compile and quantize), scaled by how
    the section's plain runs so far compared with the model."""
    profile = PROFILES[ctx.suite.name]
    work, dtype = ctx.section.workload, ctx.suite.dtype
    try:
        base = row_seconds(row, work, dtype, profile) * (ctx.clock.scale() if scaled else 1.0)
        return base + (0.0 if warm else warmup_extra_seconds(row, work, dtype, profile))
    except Exception:  # no cost model here: the row starts, and the box holds it
        return 0.0


def _fits(ctx: Context, state: RowState, warm: bool) -> bool:
    expected = state.last_seconds if state.last_seconds is not None else _estimate(ctx, state.row, warm)
    if ctx.clock.fits(expected):
        return True
    what = f"row '{state.row.label}'" + ("" if warm else " (its warm-up)")
    _drop_row(ctx, state, "skipped", _box_reason(ctx, expected, what))
    return False


def _attempt(ctx: Context, state: RowState, run) -> dict[str, Any] | None:
    """``run()`` for one row. A row that fails (a CUDA out-of-memory error, a backend or a compiler that
    does not work here) is dropped and recorded with its reason, and the section goes on with the others.
    KeyboardInterrupt (SIGTERM) is not caught: the section stops at once."""
    import torch

    try:
        return run()
    except Exception as error:  # one broken row must not lose the rest of the section
        reason = f"CUDA out of memory: {error}" if isinstance(error, torch.OutOfMemoryError) else None
        tail = traceback.format_exc().strip().splitlines()[-4:]
        reason = reason or f"{type(error).__name__}: {error}"
    _drop_row(ctx, state, "failed", reason, traceback=tail)
    gc.collect()  # outside the except block: the traceback's frames no longer hold the row's tensors
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return None


UNPAIRED = "the baseline (large only) was not measured (see its line): nothing to pair this row with"


def _reach(ctx: Context, state: RowState) -> None:
    """The rehearsal's fault for ``state``'s row, if one is set, as the section reaches the row: before any
    time check, so a busy machine that leaves the row no time cannot skip the fault."""
    _attempt(ctx, state, lambda: inject_fault(ctx.progress, state.row.label))


def _warm_up(ctx: Context, target, states: list[RowState], baseline: RowState) -> None:
    from .measure import run_warmup

    ctx.progress.say("warm-up: each row once (compiles, quantizes, every model, stage and CFG branch)")
    for state in states:
        _reach(ctx, state)
        if state.dropped:
            continue
        if baseline.dropped:  # nothing to pair it with: its warm-up would be time lost
            _drop_row(ctx, state, "skipped", UNPAIRED)
            continue
        if not _fits(ctx, state, warm=False):
            continue
        ctx.progress.say("warm-up", row=state.row.label)
        warm = _attempt(ctx, state, lambda state=state: run_warmup(target, state))
        if warm is None:
            continue
        if not state.row.kinds() & {"compile", "quantize", "engine"}:  # a plain run: calibrates the model
            ctx.clock.record(warm["seconds"], _estimate(ctx, state.row, warm=True, scaled=False))
        ctx.journal.write("warmup", row=state.row.label, stack=list(state.specs), **warm)


def _rounds(ctx: Context, target, states: list[RowState], flops: dict[str, Any], first: int) -> None:
    from .measure import run_timed

    """``repeats`` interleaved rounds of ``states`` (the baseline among them), numbered from ``first``;
    they stop when the baseline is dropped (the rows left are named by :func:`_drop_unpaired`)."""
    baseline = _baseline(states)
    others = [state for state in states if state is not baseline]
    for index in range(ctx.section.repeats):
        shift = index % max(len(others), 1)  # the baseline first (a cut-short round still pairs), the rest
        for state in [baseline, *others[shift:], *others[:shift]]:  # rotated round by round
            if baseline.dropped:  # a sample now would have no baseline of its round to pair with
                return
            if state.dropped or not _fits(ctx, state, warm=True):
                continue
            ctx.progress.say(f"round {first + index}", row=state.row.label)
            sample = _attempt(ctx, state, lambda state=state: run_timed(target, state, flops, states))
            if sample is not None:
                ctx.journal.write("sample", round=first + index, **sample)


def _drop_unpaired(ctx: Context, states: list[RowState]) -> None:
    """Once the baseline is dropped, a line for every row it leaves short of its rounds."""
    if not _baseline(states).dropped:
        return
    timed = Counter(line["row"] for line in ctx.journal.this_run() if line["kind"] == "sample")
    for state in states:
        if not state.dropped and state.row != BASELINE and timed[state.row.label] < ctx.section.repeats:
            _drop_row(ctx, state, "skipped", UNPAIRED)


def _baseline(states: list[RowState]) -> RowState:
    return next(state for state in states if state.row == BASELINE)


def _phases(states: list[RowState]) -> list[list[RowState]]:
    """Eager rows first, then each compiled row on its own, each phase warmed up and timed against the
    baseline: a compile or an engine build that runs past the box loses only its own row."""
    baseline = _baseline(states)
    eager = [state for state in states if state.eager]
    return [eager] + [[baseline, state] for state in states if not state.eager]


def _measure(ctx: Context, target, states: list[RowState]) -> None:
    from .measure import count_flops

    """Each phase warmed up, then timed in rounds against the baseline."""
    baseline, flops, first = _baseline(states), None, 1
    for phase in _phases(states):
        _warm_up(ctx, target, [state for state in phase if not state.warmed], baseline)
        if baseline.dropped:  # the rows of later phases still get their line (and their faults)
            continue
        if flops is None:
            ctx.progress.say("counting one call per model")
            flops = count_flops(target, states)
            ctx.journal.write("flops", **flops)
        _rounds(ctx, target, phase, flops, first)
        first += ctx.section.repeats
    _drop_unpaired(ctx, states)


def _end_rows(ctx: Context, wanted: list[SuiteRow]) -> str:
    """``done`` when a row this run owed was timed (the baseline counts only when it was all that was left
    to measure); ``cut short`` otherwise: the baseline alone gives no speedup."""
    timed = {line["row"] for line in ctx.journal.this_run() if line["kind"] == "sample"}
    if timed & ({row.label for row in wanted if row != BASELINE} or {BASELINE.label}):
        return _end(ctx, "done")
    return _cut_short(ctx, "only the baseline was timed" if timed else "no row was timed")


def _run_rows(ctx: Context) -> str:
    from ...accelerators import best_attention_backend
    from .measure import RowState

    backend = best_attention_backend(ctx.suite.device)
    wanted = _rows_wanted(ctx)
    if not wanted:
        return _end(ctx, "done", note="every row was measured earlier (resumed)")
    runnable = _runnable(ctx, wanted, backend)
    if BASELINE not in runnable:
        reason = "the baseline cannot run here (see its line): no row can be paired with it"
        return _end(ctx, "skipped", reason=reason)
    target = _target(ctx)
    shared: dict[str, Any] = {}  # one quantizer per spec for the whole section
    _measure(ctx, target, [RowState(row, row.specs(backend), shared) for row in runnable])
    return _end_rows(ctx, wanted)


def run_rows(ctx: Context) -> str:
    import torch

    with torch.inference_mode():
        return _run_rows(ctx)


def run_section(ctx: Context) -> str:
    """The section's runner, unless a run under the same fingerprint already finished it; its end status."""
    if ctx.section.kind != "rows" and section_finished(
        _earlier(ctx), ctx.section.name, ctx.journal.base["fingerprint"]
    ):
        return _end(ctx, "done", note="measured earlier (resumed)")
    return RUNNERS[ctx.section.kind](ctx)


RUNNERS = {"smoke": run_smoke, "overhead": run_overhead, "rows": run_rows}


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flowblending_accel.bench.suite.worker")
    parser.add_argument("--suite", required=True)
    parser.add_argument("--part", required=True)
    parser.add_argument("--section", required=True)
    parser.add_argument("--journal", type=Path, required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--deadline", type=float, required=True, help="seconds since the epoch")
    parser.add_argument("--resume", type=Path, nargs="*", default=[])
    parser.add_argument("--gpu-memory", type=int, default=None, help="bytes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    with quiet_optional_libraries():
        return _section(args)


def _section(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    suite = suite_named(args.suite)
    section = suite.section(args.section)
    progress = Progress(section.name)
    base = dict(suite=suite.name, part=args.part, section=section.name, run=args.run)
    journal = Journal(args.journal, **base)
    try:
        setup = section_setup(suite, section)
        journal = Journal(args.journal, **base, setup=setup, fingerprint=fingerprint(setup))
        clock = Clock(fault_deadline(section.name, args.deadline))
        ctx = Context(suite, section, journal, clock, progress, args.resume, args.gpu_memory, setup)
        status = run_section(ctx)
    except KeyboardInterrupt:
        journal.write("interrupted", row=progress.row, reason="stopped by SIGTERM or Ctrl-C")
        return 143
    except Exception as error:  # recorded with the row in hand; the part runner goes on
        tail = traceback.format_exc().strip().splitlines()[-6:]
        journal.write("failed", row=progress.row, reason=f"{type(error).__name__}: {error}", traceback=tail)
        print("\n".join(tail), file=sys.stderr, flush=True)
        return 1
    return 0 if status == "done" else 1


__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
