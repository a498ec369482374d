"""Reductions over the ranks that split one sample (context parallelism), for decisions every rank must take
alike: each rank holds one shard of a tensor, and a statistic of the whole tensor is reduced from the shards'
parts, so every rank gets the same number, the one a single process computes from the whole tensor.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def relative_l1(current: torch.Tensor, previous: torch.Tensor, group: Any) -> float:
    """``mean|current - previous| / mean|previous|`` of two tensors split across ``group``'s ranks (this rank
    holds one shard of each), the same on every rank. The sums of numerator and denominator are reduced
    (one 2-element all_reduce), not the ratios: the whole tensors' ratio, whatever each shard's size."""
    sums = torch.stack(
        [(current - previous).abs().sum(dtype=torch.float32), previous.abs().sum(dtype=torch.float32)]
    )
    dist.all_reduce(sums, group=group)
    return (sums[0] / sums[1]).item()
