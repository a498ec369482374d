"""The pipeline calls of analyze, calibrate and tune: each a :class:`Job`, reused from the journal when it
finished before, else made by one data-parallel rank, its result journalled as it finishes and gathered to
every rank in the job list's order.

Under ``torchrun`` every rank runs the same tool code on the same gathered results, so every rank takes the
same decisions (the next search round starts from them) and the lists it hands here are the same; the calls
missing from the journal are dealt round-robin over the data-parallel ranks, continuing from list to list so
that a list of one call (a screening call) goes to the next rank, not always to rank 0. Each rank makes at
most one call more than another. With context-parallel groups of ``group_size`` ranks, a group makes each of
its calls together and its first rank journals it.

At every gather the ranks compare what they were asked to make (a hash of the job keys): ranks that disagree
(another prompts file on one node, another journal) fail together in one line, never wait for each other. A
rank whose call raises, or that SIGTERM stops, says so at the same gather, and every rank raises. The gathers
run over a gloo group of their own on the CPU with a long timeout (a rank with no share waits for the others'
calls, minutes each on a real pair), apart from the collectives of the calls themselves.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import groupby
from typing import Any

from ..core.distributed import DistContext
from ..support.stopping import Interrupted, StopRequest
from .journal import CallJournal, MemoryJournal, call_identity, first_difference, job_key

GATHER_TIMEOUT = timedelta(hours=12)  # the longest a rank waits at a gather for the others' share


@dataclass(frozen=True)
class Job:
    """One unit of work: ``what`` it runs (the pass, its schedule or point: JSON), on call ``index`` of its
    set, whose arguments have the identity ``call`` (:func:`.journal.call_identity`); ``calls``: the pipeline
    calls it makes (0: scoring only)."""

    what: dict[str, Any]
    index: int = 0
    call: dict[str, Any] | None = None
    calls: int = 1
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", job_key(self.what, self.call))


def jobs_over(what: dict[str, Any], identities: list[dict[str, Any]], calls: int = 1) -> list[Job]:
    """``what`` on every call of a set (``identities``: each call's :func:`.journal.call_identity`)."""
    return [Job(what, index, identity, calls) for index, identity in enumerate(identities)]


def identities_of(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [call_identity(kwargs) for kwargs in calls]


class Coordinator:
    """The ranks of a run and the gloo group their gathers use (``None`` for one process)."""

    def __init__(self, ranks: DistContext | None = None) -> None:
        self.ranks = ranks or DistContext()
        self.group = None
        if self.ranks.active:
            import torch.distributed as dist

            self.group = dist.new_group(backend="gloo", timeout=GATHER_TIMEOUT)

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, by rank (one process: ``[value]``)."""
        if not self.ranks.active:
            return [value]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.ranks.world_size
        dist.all_gather_object(gathered, value, group=self.group)
        return gathered

    def agree(self, error: Exception | None) -> None:
        """Raise on every rank when one failed (its own error where it failed, the first one elsewhere)."""
        notes = self.gather(None if error is None else _note(error))
        if error is not None:
            raise error
        failed = [(rank, note) for rank, note in enumerate(notes) if note is not None]
        if failed:
            rank, (kind, text) = failed[0]
            if kind == "Interrupted":
                raise Interrupted(text)
            raise (ValueError if kind in _USER_ERRORS else RuntimeError)(f"rank {rank}: {text}")


_USER_ERRORS = ("ValueError", "TypeError", "BudgetError", "JournalMismatch", "FileNotFoundError")


def _note(error: BaseException) -> tuple[str, str]:
    return type(error).__name__, " ".join(str(error).split()) or type(error).__name__


def open_journal(
    journal: CallJournal, coordinator: Coordinator, overwrite: bool = False, resume: bool = False
) -> CallJournal:
    """Ready ``journal`` for the run: ``overwrite`` discards it first (rank 0), ``resume`` insists it exists;
    every rank reads every rank's file (a journal of another run is refused on all), after the ranks proved
    they see one folder, and before any of them appends."""
    ranks = coordinator.ranks
    error: Exception | None = None
    if ranks.is_main:
        if overwrite:
            journal.discard()
        elif resume and not journal.files():
            error = ValueError(
                f"--resume: {journal.folder.parent} holds no journal to resume; run without --resume to "
                "start."
            )
        journal.folder.mkdir(parents=True, exist_ok=True)
    coordinator.agree(error)
    _check_same_run(journal, coordinator)
    _check_shared(journal, coordinator)
    try:
        journal.read()
    except Exception as failure:  # noqa: BLE001 - said on every rank by agree()
        error = failure
    coordinator.agree(error)
    journal.start()
    return journal


def _check_same_run(journal: CallJournal, coordinator: Coordinator) -> None:
    """Every rank was asked for the same run (the same prompts file on every node, the same settings)."""
    identities = coordinator.gather(journal.identity)
    for rank, identity in enumerate(identities):
        difference = first_difference(identities[0], identity, names=("rank 0's", f"rank {rank}'s"))
        if difference:
            raise ValueError(
                f"ranks disagree on the run ({difference}): every node must run the same command on the same "
                "files."
            )


def _check_shared(journal: CallJournal, coordinator: Coordinator) -> None:
    """Every rank reads a file rank 0 wrote in the journal folder: several nodes need one shared folder."""
    if not coordinator.ranks.active:
        return
    marker = journal.folder / ".shared"
    token = uuid.uuid4().hex if coordinator.ranks.is_main else None
    if token:
        marker.write_text(token)
    token = coordinator.gather(token)[0]
    seen = marker.is_file() and marker.read_text() == token
    verdicts = coordinator.gather((seen, socket.gethostname()))
    if coordinator.ranks.is_main:
        marker.unlink(missing_ok=True)
    blind = [f"rank {rank} on {host}" for rank, (ok, host) in enumerate(verdicts) if not ok]
    if blind:
        raise ValueError(
            f"--output {journal.folder.parent}: {', '.join(blind)} cannot read what rank 0 wrote there; put "
            "--output on a filesystem every node sees (NFS, Lustre, a shared volume)."
        )


def _group_of(job: Job) -> str:
    return json.dumps(job.what, sort_keys=True)


class CallRunner:
    """Makes job lists across the ranks; ``used`` counts the pipeline calls the run's lists held (made or
    reused, on every rank: budgets count these, so a resumed run takes the path an uninterrupted one took),
    ``made`` those this rank made, ``reused`` those the journal already held."""

    def __init__(
        self,
        journal: CallJournal | None = None,
        coordinator: Coordinator | None = None,
        group_size: int = 1,
        progress: Callable | None = None,
        stop: StopRequest | None = None,
    ) -> None:
        self.journal = journal if journal is not None else MemoryJournal()
        self.coordinator = coordinator or Coordinator()
        self.data = self.coordinator.ranks.data_parallel(group_size)
        self.leads = self.coordinator.ranks.rank % group_size == 0
        self.progress, self.stop = progress, stop
        self.used = self.made = self.reused = 0
        self._dealt = 0

    @property
    def ranks(self) -> DistContext:
        return self.coordinator.ranks

    def run(
        self,
        jobs: list[Job],
        make: Callable[[Job], Any],
        around: Callable[[Job], AbstractContextManager] | None = None,
    ) -> list[Any]:
        """Every job's result, in order: ``make(job)`` for this rank's share of those not journalled, inside
        ``around(job)`` (entered once per run of consecutive jobs with the same ``what``)."""
        if not self.journal.remembers:
            self.journal.done.clear()
        done = self.journal.done
        missing = list({job.key: job for job in jobs if job.key not in done}.values())
        mine = [
            job for i, job in enumerate(missing) if (self._dealt + i) % self.data.world_size == self.data.rank
        ]
        self._dealt += len(missing)
        reused = sum(job.calls for job in {job.key: job for job in jobs if job.key in done}.values())
        self.reused += reused
        self._skip(reused)
        made, error = self._make_share(mine, make, around)
        if self.ranks.active:
            self._exchange(jobs, missing, made, error)
        self.used += sum(job.calls for job in jobs)
        return [done[job.key] for job in jobs]

    def run_everywhere(self, job: Job, make: Callable[[Job], Any]) -> Any:
        """A job every rank makes in lockstep (timing rounds: each rank's own GPU measured as bench does);
        rank 0's result is the one journalled and returned on every rank, so decisions that read it agree."""
        if not self.journal.remembers:
            self.journal.done.clear()
        if job.key in self.journal.done:
            self.reused += job.calls
            self._skip(job.calls)
        else:
            result, error, start = None, None, time.monotonic()
            try:
                self._stop_if_asked()
                result = self.journal.normalised(make(job))
            except Exception as failure:  # noqa: BLE001 - said on every rank by agree()
                if not self.ranks.active:
                    raise
                error = failure
            self.coordinator.agree(error)
            result = self.coordinator.gather(result)[0]
            if self.ranks.is_main:
                self.journal.record(job.key, job.what, job.call, result, time.monotonic() - start, job.calls)
            self.journal.done[job.key] = result
            self.made += job.calls
            self._skip(job.calls)
        self.used += job.calls
        return self.journal.done[job.key]

    def keep_output(self, job: Job, output: Any) -> None:
        """Keep ``output`` (what later calls are scored against) under ``job``'s key, stored by its maker."""
        self.journal.keep_output(job.key, output, store=self.leads)

    def output(self, job: Job) -> Any:
        return self.journal.output(job.key)

    def _make_share(self, mine: list[Job], make, around) -> tuple[dict[str, Any], Exception | None]:
        made: dict[str, Any] = {}
        try:
            for _, run in groupby(mine, key=_group_of):
                run = list(run)
                with around(run[0]) if around is not None else nullcontext():
                    for job in run:
                        self._stop_if_asked()
                        made[job.key] = self._make_one(job, make)
        except Exception as error:  # noqa: BLE001 - one process raises it; ranks say it at the gather first
            if not self.ranks.active:
                raise
            return made, error
        return made, None

    def _make_one(self, job: Job, make: Callable[[Job], Any]) -> Any:
        start = time.monotonic()
        result = self.journal.normalised(make(job))
        if self.stop is not None:
            self.stop.finished_in_time()
        if self.leads:
            self.journal.record(job.key, job.what, job.call, result, time.monotonic() - start, job.calls)
        else:
            self.journal.done[job.key] = result
        self.made += job.calls
        if self.progress is not None and job.calls:
            self.progress(job.calls)
        return result

    def _stop_if_asked(self) -> None:
        if self.stop is not None and self.stop.requested:
            raise Interrupted("stopped by SIGTERM between two calls")

    def _exchange(self, jobs: list[Job], missing: list[Job], made: dict[str, Any], error) -> None:
        asked = _digest([job.key for job in jobs]), _digest([job.key for job in missing])
        gathered = self.coordinator.gather((asked, made if self.leads else {}))
        differing = sorted({rank for rank, (theirs, _) in enumerate(gathered) if theirs != asked})
        if differing:
            raise RuntimeError(
                f"ranks disagree on the calls to make (rank {self.ranks.rank} and ranks {differing} were "
                "asked for different calls, or read different journals): every rank must run the same "
                "command on the same output folder."
            )
        for _, theirs in gathered:
            self.journal.done.update(theirs)
        self.coordinator.agree(error)
        self._skip(sum(job.calls for job in missing if job.key not in made))

    def _skip(self, calls: int) -> None:
        """The progress of calls this rank did not make (reused, or another rank's): not timed here."""
        if calls and self.progress is not None:
            getattr(self.progress, "skip", self.progress)(calls)


def _digest(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
