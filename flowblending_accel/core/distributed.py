"""Data parallel runs under ``torchrun`` and a guard that every rank routes identically.

Data parallel: prompts and seeds are sharded across ranks (sample ``i`` on rank ``i % world``), each rank
generates its share, results are gathered to every rank in the original order, router stats are summed,
and only rank 0 writes reports. With context parallelism (``cp:N``) the two compose: consecutive groups of
N ranks split one sample between them, and the data-parallel view (:meth:`DistContext.data_parallel`) shards
the samples across the groups; gathering keeps one copy per group. Context / sequence parallel (diffusers'
``enable_parallelism``, xDiT) split one sample across ranks; the router then must take the same decision on
every rank, which it does by construction (it reads the scheduler's step index, identical everywhere);
:class:`RankConsistency` checks it at every segment start and fails loudly if a rank ever disagrees. A cache
that decides from the activations decides from the whole sample's (:mod:`.collectives`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .listeners import RouterListener, SegmentStart


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def data_parallel(self, group_size: int) -> DistContext:
        """The view across context-parallel groups of ``group_size`` consecutive ranks (the mesh's ``dp``
        dimension): which group this rank is in, of how many."""
        if group_size < 1 or self.world_size % group_size:
            raise ValueError(
                f"context-parallel groups of {group_size} do not divide the {self.world_size} processes."
            )
        return DistContext(self.rank // group_size, self.world_size // group_size)


def launched_world_size() -> int:
    """The processes in this run: the initialised process group's size, else what torchrun launched (its
    ``WORLD_SIZE``; 1 outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(backend: str | None = None) -> DistContext:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); a single process gets rank 0 of 1."""
    if launched_world_size() <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return DistContext(dist.get_rank(), dist.get_world_size())


@contextmanager
def joined(backend: str | None = None) -> Iterator[DistContext]:
    """:func:`init_from_env` for a block; a process group it created is left together (a barrier, then
    ``destroy_process_group``) when the block ends, so no rank exits with the group's threads alive."""
    created = launched_world_size() > 1 and not dist.is_initialized()
    context = init_from_env(backend)
    try:
        yield context
    except BaseException:  # other ranks may be inside a collective: no barrier, torchrun tears them down
        if created and dist.is_initialized():
            dist.destroy_process_group()
        raise
    if created and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def current() -> DistContext:
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size())
    return DistContext()


def shard(items: list[Any], context: DistContext) -> list[tuple[int, Any]]:
    """``(index, item)`` pairs this rank handles: every ``world_size``-th item from ``rank``."""
    return [(i, item) for i, item in enumerate(items) if i % context.world_size == context.rank]


def gather_ordered(pairs: list[tuple[int, Any]], context: DistContext, group_size: int = 1) -> list[Any]:
    """All ranks' ``(index, result)`` pairs, merged back into index order, on every rank; with
    context-parallel groups of ``group_size`` ranks, one copy per group (every rank of a group holds it)."""
    if not context.active:
        return [value for _, value in sorted(pairs, key=lambda p: p[0])]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, pairs)
    return merge_groups(gathered, group_size)


def merge_groups(gathered: list[list[tuple[int, Any]]], group_size: int = 1) -> list[Any]:
    """Every rank's ``(index, result)`` pairs (by rank) merged into index order, one rank per group."""
    merged = [pair for rank, part in enumerate(gathered) if rank % group_size == 0 for pair in part]
    return [value for _, value in sorted(merged, key=lambda p: p[0])]


def sum_counts(counts: dict[str, float], context: DistContext) -> dict[str, float]:
    """Per-model calls, steps, seconds or FLOPs summed over ranks (every rank gets the total)."""
    if not context.active:
        return dict(counts)
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, counts)
    total: Counter = Counter()
    for part in gathered:
        total.update(part)
    return dict(total)


class RankConsistency(RouterListener):
    """Router listener: at every segment start all ranks compare (step, model); a mismatch raises on all."""

    def on_segment_start(self, router: Any, segment: SegmentStart) -> None:
        context = current()
        if not context.active:
            return
        decisions: list[Any] = [None] * context.world_size
        dist.all_gather_object(decisions, (segment.step, segment.model))
        if len(set(decisions)) > 1:
            raise RuntimeError(
                f"ranks disagree on the routing at a segment start: {decisions}. "
                "Every rank must run the same schedule and scheduler "
                "(context parallelism splits one sample across ranks)."
            )
