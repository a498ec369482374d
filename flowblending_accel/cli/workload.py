"""What analyze, calibrate and tune share at the command line's edge: the workload options (target, seeds,
fit prompts, scorers, budgets, resuming), parsed once into a :class:`~flowblending_accel.analysis.workload.
WorkloadRequest`; the target they name, checked and built by the one target resolver; and the run of the
workload analysis makes on it (the fit / held-out split, the scorers, the call plan), under torchrun across
the ranks, with its calls journalled in the output folder and SIGTERM turned into a stop that says how to
resume."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import add_threads_option, positive_number, whole_number
from .targeting import add_target_options, setting, target_settings

if TYPE_CHECKING:
    from ..analysis.workload import Tolerance, Workload, WorkloadRequest
    from ..targets.options import TargetOptions

EMBEDDED_FIT_PROMPTS, EMBEDDED_PROMPTS = 12, 40


def add_workload_options(parser: argparse.ArgumentParser) -> None:
    add_target_options(parser)
    parser.add_argument("--seeds", type=whole_number(1), default=None, help="seeds per prompt (default 2)")
    parser.add_argument(
        "--fit-prompts",
        type=whole_number(1),
        default=None,
        help="prompts to fit on (default: 12 of the embedded pair's 40; half of yours); calibrate "
        "holds the rest out, analyze fits on all of yours unless this picks some",
    )
    parser.add_argument(
        "--scorers",
        nargs="+",
        default=None,
        metavar="NAME",
        help="quality vs large-only: psnr, ssim, temporal, feature:dino=PATH, fd:clip=PATH, "
        "module:function, classifier (embedded); default classifier and ssim for the "
        "embedded pair, ssim otherwise",
    )
    add_threads_option(parser)
    parser.add_argument("--output", type=Path, required=True, help="results folder")
    budget = parser.add_argument_group(
        "cost",
        "The pipeline calls the command will make are printed before the first one, and the estimated wall "
        "time after it. A plan that cannot fit a budget is refused, naming a smaller plan that fits.",
    )
    budget.add_argument(
        "--max-calls",
        type=whole_number(1),
        default=None,
        help="pipeline calls the whole run may make (under torchrun: each rank)",
    )
    budget.add_argument(
        "--max-minutes",
        type=positive_number,
        default=None,
        help="wall time the whole run may take (checked at the first call's time, for one rank's share)",
    )
    budget.add_argument(
        "--proxy-size",
        default=None,
        metavar="HxWxF",
        help="fit (analyse, calibrate, tune) at this smaller size, e.g. 240x416x9 (HxW for images); the "
        "held-out prompts run at the full size, and the report says whether the pick held there",
    )
    journal = parser.add_argument_group(
        "resume and torchrun",
        "Every finished pipeline call is journalled in OUTPUT/journal as it finishes. The same command run "
        "again on the same --output makes only the calls the journal lacks and writes the report an "
        "uninterrupted run writes; a journal of another target, other prompts or other settings is refused. "
        "SIGTERM (a scheduler's preemption or time limit) stops within 20 s (FLOWBLENDING_STOP_GRACE) and "
        "exits 143. Under torchrun (one node or many) the calls are shared by the ranks and rank 0 writes "
        "the report; --output must be on a filesystem every node sees.",
    )
    journal.add_argument(
        "--context-parallel",
        type=whole_number(2),
        default=None,
        metavar="N",
        help="under torchrun: groups of N ranks split each call (Ulysses, on both models), the calls "
        "shard across the groups",
    )
    again = journal.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true", help="resume only: refuse an --output that holds no journal"
    )
    again.add_argument(
        "--overwrite", action="store_true", help="discard the journal in --output and start again"
    )


PROXY_NAMES = ("height", "width", "num_frames")


def parse_proxy_size(text: str | None) -> dict[str, int] | None:
    """``--proxy-size 240x416x9`` (or ``240x416`` for images) as call arguments."""
    if text is None:
        return None
    parts = text.lower().split("x")
    if len(parts) not in (2, 3) or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ValueError(
            f"--proxy-size {text!r}: write HEIGHTxWIDTHxFRAMES (e.g. 240x416x9), or HxW for images."
        )
    return dict(zip(PROXY_NAMES, map(int, parts), strict=False))


def workload_request(args: argparse.Namespace, holding: bool) -> tuple[WorkloadRequest, TargetOptions]:
    """The workload the options ask for (flags over the config file; the embedded pair's defaults), and the
    options of the target it runs on."""
    from ..analysis.workload import WorkloadRequest

    options, config = target_settings(args)
    embedded = options.kind == "embedded"
    request = WorkloadRequest(
        output=args.output,
        scorers=tuple(setting(args, config, "scorers", ["classifier", "ssim"] if embedded else ["ssim"])),
        seeds=int(setting(args, config, "seeds", 2)),
        holdout_seeds=getattr(args, "holdout_seeds", 4),
        fit_prompts=args.fit_prompts or (EMBEDDED_FIT_PROMPTS if embedded and not options.prompts else None),
        holding=holding,
        proxy=parse_proxy_size(getattr(args, "proxy_size", None)),
        windows=getattr(args, "windows", 0),
        sensitivity_window=getattr(args, "sensitivity_window", 0) or 0,
        max_calls=args.max_calls,
        max_minutes=getattr(args, "max_minutes", None),
        threads=args.threads,
        offered_scorers=("classifier",) if embedded else (),
        context_parallel=args.context_parallel or 1,
    )
    return request, options


@contextmanager
def workload_run(
    request: WorkloadRequest,
    options: TargetOptions,
    plan_of: Callable[[Any, Any], Any],
    tolerance: Tolerance | None = None,
    tool: str = "",
    settings: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> Iterator[Workload]:
    """Check everything the user gave (``tolerance``: the parsed --tolerance) before any work; then, across
    the ranks torchrun launched (one process: alone), open the output folder's journal (refused when it is of
    another run: ``tool`` and ``settings``, the tool's own result-changing settings, are part of the run's
    identity), build the target and the workload on it, whose plan (``plan_of(cost.WorkloadSizes, target)``)
    is refused against --max-calls and said before the first pipeline call. SIGTERM inside the block stops
    the run with a message saying how to resume."""
    from ..analysis.call_runner import Coordinator, open_journal
    from ..analysis.journal import CallJournal
    from ..analysis.workload import run_identity
    from ..core.distributed import joined
    from ..support.stopping import Interrupted, stop_on_sigterm

    checked = _check(request, options, tolerance)
    identity = run_identity(tool, _target_identity(options, checked), request, **(settings or {}))
    with joined() as ranks, stop_on_sigterm() as stop:
        coordinator = Coordinator(ranks)
        journal = CallJournal(request.output, identity, ranks.rank, ranks.world_size)
        try:
            open_journal(journal, coordinator, overwrite, resume)
            groups = ranks.world_size // request.context_parallel
            work = _build(request, options, checked, plan_of, groups)
            work.journal, work.coordinator, work.stop = journal, coordinator, stop
            work.group_size = request.context_parallel
            with _split_calls(work, request.context_parallel):
                yield work
        except Interrupted as stopped:
            raise Interrupted(
                f"stopped by SIGTERM ({stopped}); {journal.journalled_calls()} calls are journalled in "
                f"{journal.folder}: "
                "run the same command again (or add --resume) to make only the missing ones"
            ) from None


@contextmanager
def _split_calls(work: Workload, degree: int) -> Iterator[None]:
    """With ``--context-parallel N``: the large models split by diffusers' context parallelism for the whole
    run (after the FLOP count, which counts whole calls); every routed call's small model follows them."""
    if degree < 2:
        yield
        return
    from ..accelerators import ContextParallel, RoutedModels

    models = RoutedModels.of(work.target.pipe, work.target.small)
    accelerator = ContextParallel(ulysses_degree=degree).create()
    accelerator.check(models, [])
    accelerator.apply(models)
    try:
        yield
    finally:
        accelerator.remove(models)


def _check(request: WorkloadRequest, options: TargetOptions, tolerance: Tolerance | None):
    """Everything checkable before a process group, a model or a journal: the target's checked form."""
    from ..analysis.workload import check_request
    from ..support.files import check_output_folder
    from ..targets.resolve import check_target, given_prompts, known_family

    if request.context_parallel > 1:
        from ..accelerators import ContextParallel

        try:
            ContextParallel(ulysses_degree=request.context_parallel).check_environment(options.device)
        except ValueError as error:
            raise ValueError(f"--context-parallel {request.context_parallel}: {error}") from None
    check_output_folder(request.output)
    checked = check_target(options)
    if options.kind == "random":
        raise ValueError(
            f"--target {options.target}: random weights make noise; there is no quality to analyse. "
            "Use the embedded pair, your folders or your factory."
        )
    known = known_family(options, checked)
    family = known[0] if known is not None else None
    check_request(request, given_prompts(options, checked), family, options.steps, tolerance)
    return checked


def _target_identity(options: TargetOptions, checked) -> dict[str, Any]:
    """What the target is, as a journal must match it: its identity, dtype, device kind, the size and call
    settings given, and the prompts of a --prompts file (the target's own otherwise)."""
    from ..targets.resolve import given_prompts

    prompts = given_prompts(options, checked)
    return {
        "target": options.identity(),
        "dtype": options.torch_dtype_name,
        "device": options.device.partition(":")[0],
        "settings": options.given_call_options(),
        "prompts": None if prompts is None else [[prompt.text, prompt.arguments] for prompt in prompts],
    }


def _build(request, options, checked, plan_of, ranks: int) -> Workload:
    from ..analysis.workload import Workload
    from ..support.threads import use_threads
    from ..targets.resolve import build_target

    threads = use_threads(request.threads)
    target = build_target(options, checked, embedded_prompts=EMBEDDED_PROMPTS)
    _check_proxy(request.proxy, target)
    return Workload.prepare(request, target, plan_of, threads, ranks)


def _check_proxy(proxy, target) -> None:
    from ..targets.resolve import pipeline_takes

    for name in proxy or {}:
        if not pipeline_takes(type(target.pipe), name):
            raise ValueError(
                f"--proxy-size: {type(target.pipe).__name__} takes no {name}; give HxW for an image pipeline."
            )


def parse_tolerance(values: list[str] | None) -> Tolerance | None:
    """``--tolerance``: None (the hand-picked schedule's scores), one number for every score, or SCORER=MIN
    pairs; the names are checked against the scorers before the target is built."""
    if values is None:
        return None
    try:
        if len(values) == 1 and "=" not in values[0]:
            return float(values[0])
        pairs = dict(value.rsplit("=", 1) for value in values)
        return {name: float(minimum) for name, minimum in pairs.items()}
    except ValueError as error:
        raise ValueError(
            f"--tolerance {' '.join(values)}: write SCORER=MIN pairs or one number ({error})."
        ) from None
