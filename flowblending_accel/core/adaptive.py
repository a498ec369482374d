"""The adaptive switch at run time: each sample leaves the large model when the large model's output settles.

An adaptive schedule (``"L20:60~0.05-S-L20"``, :class:`~.schedule.AdaptiveSwitch`) gives every sample of a
batched call its own boundary, decided from outputs the run already has, at no extra denoiser call:

* **Criterion.** After each step a sample spends on the large model, its *relative self-difference*
  ``r_t = ||c_t - c_(t-1)|| / ||c_(t-1)||`` is measured, where ``c_t`` is the sample's conditional-branch
  output of step ``t`` (L2 over all its elements). A sample enters the small stage at the first step ``t``
  of the switch window whose previous step has ``r_(t-1)`` below the threshold, and at the window's ceiling
  at the latest. The conditional branch is read because the router sees the branches, not the guidance scale
  the pipeline blends them with; on the embedded pair it gives the guided output's ordering of steps with
  less spread (``benchmarks/results/adaptive-boundary``).
* **Per sample in a batch.** At a step where some samples are on each model, the call is split: the large
  model runs the rows of its samples, the small model the rest, and the output is reassembled in row order.
  A sample's rows are its row in every call of the step (pipelines that make one call per CFG branch, Wan)
  or its row in each half of a batched-CFG call (``[uncond, cond]``: LTX, SD), so the CFG branches of a
  sample always stay on one model; a Heun corrector stays on its step's models. Every tensor argument whose
  leading dimension is the call's batch is split with it.
* **Cost.** Deciding reads the self-differences back to the host once per step of the window (one small
  device sync), and the latest conditional output of the batch is kept until the ceiling (one output's
  memory). A mixed step makes two smaller calls in place of one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .plan import Plan

LATENT_ARGUMENTS = ("hidden_states", "sample")  # where diffusers denoisers take the batch by keyword


@dataclass(frozen=True)
class BatchLayout:
    """How a call's rows belong to samples: ``groups`` blocks of ``samples`` rows (2 for batched CFG, the
    conditional block last, as diffusers stacks ``[uncond, cond]``)."""

    samples: int
    groups: int = 1

    @property
    def rows(self) -> int:
        return self.samples * self.groups

    def rows_of(self, samples: list[int]) -> list[int]:
        return [group * self.samples + sample for group in range(self.groups) for sample in samples]

    def conditional(self, output: torch.Tensor) -> torch.Tensor:
        return output[(self.groups - 1) * self.samples :]


class SampleSwitches:
    """Per-sample state of one adaptive run: the self-differences seen so far and each sample's boundary
    (the step it entered the small stage; ``None`` while it is still on the large model)."""

    def __init__(self, plan: Plan, rows_per_sample: int = 1) -> None:
        if plan.switch_window is None:
            raise ValueError(f"schedule {plan.schedule} is not adaptive: it has no switch window.")
        self.threshold = plan.schedule.adaptive.threshold
        self.first, self.ceiling = plan.switch_window
        self.late_start = plan.late_start
        self.rows_per_sample = rows_per_sample
        self.layout: BatchLayout | None = None
        self.boundaries: list[int | None] = []
        self.self_difference: dict[int, list[float | None]] = {}
        self._previous: torch.Tensor | None = None
        self._observed_step = -1

    def models_at(self, step: int) -> list[str] | None:
        """The model of every sample at ``step`` (``None`` before the first output says the batch size)."""
        if self.layout is None:
            return None
        return [
            "small" if boundary is not None and boundary <= step < self.late_start else "large"
            for boundary in self.boundaries
        ]

    def decide(self, step: int) -> None:
        """At the first call of ``step``: samples whose previous step settled enter the small stage here,
        and at the ceiling every sample still on the large model does."""
        if self.layout is None or not self.first <= step <= self.ceiling:
            return
        settled = self.self_difference.get(step - 1, [None] * self.layout.samples)
        for sample, boundary in enumerate(self.boundaries):
            difference = settled[sample]
            below = difference is not None and difference < self.threshold
            if boundary is None and (step == self.ceiling or below):
                self.boundaries[sample] = step

    def observe(self, step: int, output: Any) -> None:
        """Read the first call of ``step`` (the conditional branch first, or a batched-CFG call): the
        self-difference of every sample still on the large model. Later calls of the step (the other CFG
        branch, a corrector), steps past the ceiling and steps after every sample has switched are not
        read."""
        if step <= self._observed_step or step >= self.ceiling or self._all_decided():
            return
        self._observed_step = step
        rows = first_tensor(output)
        if self.layout is None:
            self.layout = _layout(rows.shape[0], self.rows_per_sample)
            self.boundaries = [None] * self.layout.samples
        current = self.layout.conditional(rows).detach()
        if self._previous is not None and self._previous.shape == current.shape:
            change = (current - self._previous).flatten(1).float().norm(dim=1)
            scale = self._previous.flatten(1).float().norm(dim=1).clamp_min(1e-12)
            values = (change / scale).tolist()
            self.self_difference[step] = [
                value if boundary is None else None
                for value, boundary in zip(values, self.boundaries, strict=True)
            ]
        self._previous = current.clone()

    def _all_decided(self) -> bool:
        return self.layout is not None and all(boundary is not None for boundary in self.boundaries)

    def clear(self) -> None:
        """Let go of the kept output (the run ended)."""
        self._previous = None


def _layout(rows: int, rows_per_sample: int) -> BatchLayout:
    if rows % rows_per_sample:
        raise ValueError(
            f"a batched-CFG call has {rows} rows, not {rows_per_sample} per sample: the adaptive switch "
            "cannot tell which rows belong to which sample; use a fixed schedule for this pipeline."
        )
    return BatchLayout(rows // rows_per_sample, rows_per_sample)


# ------------------------------------------------------------------------------- splitting a call by rows
def split_by_sample(
    switches: SampleSwitches, step: int, args: tuple, kwargs: dict, run: Callable[..., Any]
) -> Any:
    """One call split by sample: ``run(model, args, kwargs, samples)`` runs each model on the rows of its
    samples at ``step``; the outputs are reassembled in row order."""
    models, layout = switches.models_at(step), switches.layout
    batch, parts = batch_rows(args, kwargs), []
    if batch != layout.rows:
        raise RuntimeError(
            f"a call at step {step} has {batch} rows where the run's first had {layout.rows}: the adaptive "
            "switch cannot tell which rows belong to which sample; use a fixed schedule for this pipeline."
        )
    for model in ("large", "small"):
        samples = [sample for sample, chosen in enumerate(models) if chosen == model]
        rows = layout.rows_of(samples)
        part_args, part_kwargs = take_rows(args, kwargs, rows, batch)
        parts.append((rows, run(model, part_args, part_kwargs, tuple(samples))))
    return merge_rows(parts, batch)


def batch_rows(args: tuple, kwargs: dict) -> int:
    """The call's batch size: the leading dimension of its latents (``hidden_states`` / ``sample`` or the
    first positional tensor)."""
    for name in LATENT_ARGUMENTS:
        if isinstance(kwargs.get(name), torch.Tensor):
            return kwargs[name].shape[0]
    for value in args:
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    raise ValueError(
        "the adaptive switch splits a call by its batch, but this denoiser call passes no latents tensor "
        f"(keyword {' or '.join(LATENT_ARGUMENTS)}, or positional); use a fixed schedule."
    )


def take_rows(args: tuple, kwargs: dict, rows: list[int], batch: int) -> tuple[tuple, dict]:
    """``args`` and ``kwargs`` with every tensor whose leading dimension is ``batch`` cut to ``rows``."""
    index: torch.Tensor | None = None

    def cut(value: Any) -> Any:
        nonlocal index
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != batch:
            return value
        if index is None or index.device != value.device:
            index = torch.tensor(rows, device=value.device)
        return value.index_select(0, index)

    return tuple(cut(value) for value in args), {name: cut(value) for name, value in kwargs.items()}


def merge_rows(parts: list[tuple[list[int], Any]], batch: int) -> Any:
    """One output of ``batch`` rows from the outputs of calls on row subsets (``(rows, output)``), shaped
    like the first part's output (a tensor, a tuple, or a diffusers output object)."""
    first = first_tensor(parts[0][1])
    merged = first.new_empty((batch, *first.shape[1:]))
    for rows, output in parts:
        merged.index_copy_(0, torch.tensor(rows, device=merged.device), first_tensor(output))
    return _with_first_tensor(parts[0][1], merged)


def first_tensor(output: Any) -> torch.Tensor:
    """The prediction in a denoiser's output: the tensor itself, the first item of a tuple, or the first
    field of a diffusers output object."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list):
        return output[0]
    return output.to_tuple()[0]


def _with_first_tensor(output: Any, tensor: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return tensor
    if isinstance(output, tuple | list):
        return type(output)((tensor, *output[1:]))
    fields = dict(output)
    fields[next(iter(fields))] = tensor
    return type(output)(**fields)
