"""A target: what a tool runs on. A pipeline and its small model, the call arguments every call shares,
the prompts of its default workload, how many prompts one call takes, and how to read the output."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..core.families import Family, family_for
from .prompts import Prompt, load_arguments

if TYPE_CHECKING:
    from ..accelerators import AcceleratorConfig


@dataclass
class Target:
    """Args:
    name, description: for reports.
    pipe, small: the pipeline (large denoiser inside) and the small model (or one per denoiser).
    device: where it runs (``"cpu"``, ``"cuda"``).
    base: call arguments of every call (size, steps, guidance, ``output_type``, embeddings ...).
    prompts: the default workload's prompts (a user's ``--prompts`` replaces them).
    batch: prompts per pipeline call (``None``: all of a seed's prompts in one call).
    quality: the outputs mean something (trained weights); random-weight presets have none.
    scorers: quality scorers only this target offers (the embedded pair's classifier), by name.
    stack_members: accelerators every stack on this target carries (what its memory mode asks for, e.g.
        ``offload:1`` beside group offloading); the tools put them under each row's own.
    """

    name: str
    pipe: Any
    small: Any
    device: str
    description: str
    base: dict[str, Any]
    prompts: list[Prompt]
    batch: int | None = 1
    quality: bool = True
    scorers: dict[str, Callable] = field(default_factory=dict)
    stack_members: tuple[AcceleratorConfig, ...] = ()

    @property
    def family(self) -> Family:
        return family_for(self.pipe)

    @property
    def output_field(self) -> str:
        return self.family.output_field

    @property
    def large(self) -> torch.nn.Module:
        """The pipeline's (first) routed denoiser."""
        return getattr(self.pipe, self.family.present_denoisers(self.pipe)[0])

    @property
    def guidance_scale(self) -> float:
        """The classifier-free guidance scale the calls run at: the family's CFG argument in the shared
        call arguments, else the pipeline call's own default (1: no CFG)."""
        name = self.family.cfg_scale_arg
        if name in self.base:
            return float(self.base[name])
        parameter = inspect.signature(type(self.pipe).__call__).parameters.get(name)
        default = parameter.default if parameter is not None else None
        return float(default) if isinstance(default, int | float) else 1.0

    @property
    def steps(self) -> int:
        """The step count the calls run: the shared call arguments' own, else the pipeline call's default."""
        if "num_inference_steps" in self.base:
            return int(self.base["num_inference_steps"])
        parameter = inspect.signature(type(self.pipe).__call__).parameters.get("num_inference_steps")
        return int(parameter.default) if parameter is not None else 50

    def output(self, result: Any) -> Any:
        """The generated frames or images of a pipeline call's ``result``."""
        return getattr(result, self.output_field)

    def call(self, prompts: list[Prompt], seeds: list[int]) -> dict[str, Any]:
        """One pipeline call for ``prompts`` (their own arguments must agree), sample ``i`` seeded
        ``seeds[i]``."""
        own = [prompt.arguments for prompt in prompts]
        if any(arguments != own[0] for arguments in own):
            raise ValueError("prompts with different call arguments cannot share one pipeline call.")
        kwargs = {**self.base, **load_arguments(own[0])}
        batched = self.batch is None or len(prompts) > 1
        texts = [prompt.text for prompt in prompts]
        if texts[0] is not None:  # a string negative prompt is broadcast over a batch by the pipeline
            kwargs["prompt"] = texts if batched else texts[0]
        # CPU generators: the noise of a seed is the same on every machine (pipelines move it to the device).
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        kwargs["generator"] = generators if batched else generators[0]
        return kwargs

    def calls(self, prompts: list[Prompt], seeds: list[int]) -> list[dict[str, Any]]:
        """Every call of the workload ``prompts`` x ``seeds``; sample ``i`` under seed ``s`` gets the
        generator seeded ``1000 * s + i`` whatever the batching."""
        size = len(prompts) if self.batch is None else self.batch
        calls = []
        for seed in seeds:
            for start in range(0, len(prompts), size):
                chunk = prompts[start : start + size]
                calls.append(self.call(chunk, [1000 * seed + start + i for i in range(len(chunk))]))
        return calls

    def call_kwargs(self, seed: int = 0) -> dict[str, Any]:
        """The workload's first call under ``seed`` (what ``bench`` and ``check`` time and count)."""
        return self.calls(self.prompts, [seed])[0]
