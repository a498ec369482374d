"""``bench`` under ``torchrun``: every rank measures the same rows in lockstep (context-parallel rows split
one sample across them); the table rank 0 writes adds, per row, rank 0's wall time, the slowest rank's (the
median over rounds of the slowest rank in that round: what a user waits for), and FLOPs per rank and in
total (under context parallelism each rank counts the share it computed)."""

from __future__ import annotations

import statistics
from typing import Any

from ..core.distributed import DistContext


def across_ranks(table: list[dict[str, Any]], context: DistContext) -> list[dict[str, Any]]:
    """``table`` (this rank's) with a ``ranks`` entry per row, from every rank's table; collective."""
    import torch.distributed as dist

    mine = [{"seconds": row["seconds"]["all"], "flops": row["flops"]["total"]} for row in table]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, mine)
    for index, row in enumerate(table):
        per_rank = [rows[index] for rows in gathered]
        rounds = zip(*(entry["seconds"] for entry in per_rank), strict=False)
        row["ranks"] = {
            "count": context.world_size,
            "rank0_seconds": statistics.median(per_rank[0]["seconds"]),
            "slowest_rank_seconds": statistics.median(max(times) for times in rounds),
            "seconds_per_rank": [statistics.median(entry["seconds"]) for entry in per_rank],
            "flops_per_rank": [entry["flops"] for entry in per_rank],
            "flops_total": sum(entry["flops"] for entry in per_rank),
        }
    return table


def rank_lines(table: list[dict[str, Any]]) -> list[str]:
    """The per-rank section of bench.md (empty for a single process)."""
    if not table or "ranks" not in table[0]:
        return []
    count = table[0]["ranks"]["count"]
    lines = [
        "",
        f"Across {count} ranks (torchrun): wall s per rank is each rank's median; slowest rank: the median "
        "over rounds of the slowest rank in the round.",
        "",
        "| row | rank 0 wall s | slowest rank wall s | wall s per rank | FLOPs per rank | FLOPs total |",
        "|---|---|---|---|---|---|",
    ]
    for row in table:
        ranks = row["ranks"]
        per_rank = " / ".join(f"{seconds:.4f}" for seconds in ranks["seconds_per_rank"])
        flops = " / ".join(f"{flops:.3g}" for flops in ranks["flops_per_rank"])
        lines.append(
            f"| {row['label']} | {ranks['rank0_seconds']:.4f} | {ranks['slowest_rank_seconds']:.4f} | "
            f"{per_rank} | {flops} | {ranks['flops_total']:.3g} |"
        )
    return lines
