"""95 % intervals beside every mean a report shows: normal for means, Wilson for proportions."""

from __future__ import annotations

import math

import torch


def mean_interval(values: torch.Tensor) -> dict[str, float]:
    values = values.double()
    mean = float(values.mean())
    half = 1.96 * float(values.std()) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"mean": mean, "low": mean - half, "high": mean + half}


def proportion_interval(hits: int, total: int) -> dict[str, float]:
    """Wilson score interval for a proportion."""
    if total == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan")}
    z, p = 1.96, hits / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return {"mean": p, "low": centre - half, "high": centre + half}


def interval_of(values: list) -> dict[str, float]:
    """A per-sample figure's interval: a proportion (Wilson) for bools, a mean (normal) otherwise."""
    if values and all(isinstance(value, bool) for value in values):
        return proportion_interval(sum(values), len(values))
    return mean_interval(torch.tensor(values, dtype=torch.float64))
