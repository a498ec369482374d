"""What deciding together costs per call: FirstBlockCache's skip decision under context parallelism.

Split across ranks, FBC's decision sums ``|current - previous|`` and ``|previous|`` over the rank's shard and
reduces the two sums over the ranks of the split (one 2-element all_reduce) before comparing
(``flowblending_accel.core.collectives.relative_l1``); a rank deciding alone takes the means of its shard, as
diffusers does. Per call, for each shard size, interleaved: the decision alone, the decision together, and
the 2-element all_reduce by itself. Before each timed call the ranks meet at a barrier (not timed), so a
collective's time includes waiting for the other rank to arrive. Median and quartiles per rank.

Launch it with two processes (gloo on the CPU, NCCL on GPUs)::

    torchrun --standalone --nproc_per_node 2 benchmarks/collective_decision.py --calls 2000 \\
        --output benchmarks/results/collective_decision_cpu

Rank 0 prints the table and writes OUTPUT.json and OUTPUT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from flowblending_accel.bench.runner import spread
from flowblending_accel.core.collectives import relative_l1
from flowblending_accel.core.distributed import joined
from flowblending_accel.support.env import device_name, versions
from flowblending_accel.support.files import write_atomic

# (tokens per rank, width, share of --calls): the tiny Wan test's shard, and a Wan 1.3B-wide shard of 8192
# tokens split in two (each call reads 50 MB: a tenth of the calls).
SHARDS = ((4, 48, 1.0), (4096, 1536, 0.1))


def alone(current: torch.Tensor, previous: torch.Tensor) -> float:
    """diffusers' FirstBlockCache ratio on the rank's own shard (what each rank decided from before)."""
    return ((current - previous).abs().mean() / previous.abs().mean()).item()


def timed(function: Callable[[], object], device: torch.device) -> float:
    dist.barrier()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure_shard(tokens: int, width: int, calls: int, warmup: int, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(dist.get_rank())
    previous = torch.randn(1, tokens, width, generator=generator).to(device)
    current = previous + 0.05 * torch.randn(1, tokens, width, generator=generator).to(device)
    sums = torch.zeros(2, device=device)
    variants = {
        "alone": lambda: alone(current, previous),
        "together": lambda: relative_l1(current, previous, dist.group.WORLD),
        "all_reduce_only": lambda: dist.all_reduce(sums),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for index in range(warmup + calls):
        for name, function in variants.items():  # interleaved: the machine's load falls on all three
            elapsed = timed(function, device)
            if index >= warmup:
                seconds[name].append(elapsed)
    added = [t - a for t, a in zip(seconds["together"], seconds["alone"], strict=True)]
    return {
        "shard": [1, tokens, width],
        "calls": calls,
        **{name: spread(values) for name, values in seconds.items()},
        "added_by_deciding_together": spread(added),
    }


def measure(calls: int, warmup: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
    device = device or torch.device("cpu")
    load = os.getloadavg()[0]
    mine = [
        measure_shard(tokens, width, max(1, round(calls * share)), warmup, device)
        for tokens, width, share in SHARDS
    ]
    ranks: list = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, mine)
    return {
        "benchmark": "collective_decision",
        "backend": dist.get_backend(),
        "processes": dist.get_world_size(),
        "calls": calls,
        "warmup": warmup,
        "torch_threads": threads,
        "load_average_at_start": load,  # the machine is shared: what else ran
        "device": device_name(str(device)),
        "versions": versions(),
        "ranks": ranks,
    }


def _microseconds(stats: dict) -> str:
    return f"{stats['median'] * 1e6:.1f} ({stats['q1'] * 1e6:.1f} .. {stats['q3'] * 1e6:.1f})"


def markdown(result: dict, command: str) -> str:
    lines = [
        "# Deciding together: FirstBlockCache's skip decision across context-parallel ranks",
        "",
        f"- device: {result['device']}, {result['processes']} processes over {result['backend']}, "
        f"{result['torch_threads']} torch thread(s) each; 1-minute load average "
        f"{result['load_average_at_start']:.1f} at the start (the machine is shared)",
        f"- versions: {result['versions']}",
        f"- timed calls per variant (below) after {result['warmup']} warm-up, interleaved; a barrier (not "
        "timed) before each",
        f"- command: `{command}`",
        "",
        "Per call, µs: median (quartiles).",
        "",
        "| rank | shard | calls | decide alone (shard means) | decide together (sums + all_reduce) | "
        "added | 2-element all_reduce alone |",
        "|---|---|---|---|---|---|---|",
    ]
    for rank, shards in enumerate(result["ranks"]):
        for found in shards:
            lines.append(
                f"| {rank} | {'x'.join(map(str, found['shard']))} | {found['calls']} | "
                f"{_microseconds(found['alone'])} | "
                f"{_microseconds(found['together'])} | {_microseconds(found['added_by_deciding_together'])} "
                f"| {_microseconds(found['all_reduce_only'])} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--calls",
        type=int,
        default=2000,
        help="timed calls per variant on the tiny shard (a tenth on the wide)",
    )
    parser.add_argument("--warmup", type=int, default=50, help="untimed calls first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--output", type=Path, default=None, help="write OUTPUT.json and OUTPUT.md (rank 0)")
    args = parser.parse_args()
    with joined() as context:
        if not context.active:
            parser.error("it measures a collective: launch it with torchrun --nproc_per_node 2.")
        result = measure(args.calls, args.warmup, args.threads)
    command = (
        f"torchrun --standalone --nproc_per_node {result['processes']} benchmarks/collective_decision.py "
        f"--calls {args.calls} --warmup {args.warmup} --threads {args.threads}"
    )
    if not context.is_main:
        return
    report = markdown(result, command)
    print(report)
    if args.output:
        result["command"] = command
        write_atomic(args.output.with_suffix(".json"), (json.dumps(result, indent=2) + "\n").encode())
        write_atomic(args.output.with_suffix(".md"), report.encode())


if __name__ == "__main__":
    main()
