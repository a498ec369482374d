"""What the router itself costs per denoiser call, measured two ways.

* In a pipeline: routed all-large (``L100``) against the unwrapped pipeline, interleaved (A B A B ...) after
  a warm-up, same seed; the overhead per call is the median of the paired differences divided by the calls
  per run, and the two outputs must be bit-identical (the same computation). On a GPU each call is timed
  with CUDA events.
* In isolation: a scheduler loop over a denoiser that does no work, hooked by the router vs not hooked, and
  vs a do-nothing diffusers hook (the hook dispatch every cache pays too): the router's own Python cost.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from typing import Any

import torch

from ..accelerators import flowblending
from ..core.schedule import PAPER_SCHEDULE
from ..targets import Target
from .runner import spread, timed_call


def overhead_pairs(target: Target, repeats: int, warmup: int = 3) -> Iterator[dict[str, Any]]:
    """Unwrapped then routed (``L100``) calls of ``target``'s workload, same seed; yields each pair after
    ``warmup`` untimed ones: both times, the denoiser calls per run, and whether the outputs are equal
    bit for bit."""
    with torch.inference_mode():
        for index in range(warmup + repeats):
            seconds_plain, reference, peak_plain = timed_call(target, target.call_kwargs(0))
            with flowblending(target.pipe, target.small, "L100") as router:
                seconds_routed, output, peak_routed = timed_call(target, target.call_kwargs(0))
                calls = sum(router.last_run.calls_per_model.values())
            if index < warmup:
                continue
            yield {
                "unwrapped_seconds": seconds_plain,
                "routed_seconds": seconds_routed,
                "calls_per_run": calls,
                "bit_identical": torch.equal(torch.as_tensor(output), torch.as_tensor(reference)),
                "peak_memory_bytes": max(filter(None, [peak_plain, peak_routed]), default=None),
            }


def summarise_pairs(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """The overhead per call (median of the paired differences over the calls per run), run times, and
    whether every pair was bit-identical."""
    calls = pairs[0]["calls_per_run"]
    plain = [pair["unwrapped_seconds"] for pair in pairs]
    routed = [pair["routed_seconds"] for pair in pairs]
    diffs = [(pair["routed_seconds"] - pair["unwrapped_seconds"]) / calls for pair in pairs]
    return {
        "calls_per_run": calls,
        "repeats": len(pairs),
        "run_seconds": {"unwrapped": spread(plain), "routed_all_large": spread(routed)},
        "call_seconds_unwrapped": statistics.median(plain) / calls,
        "overhead_per_call_seconds": spread(diffs),
        "overhead_fraction_of_run": statistics.median(diffs) * calls / statistics.median(plain),
        "bit_identical": all(pair["bit_identical"] for pair in pairs),
    }


def pipeline_overhead(target: Target, repeats: int, warmup: int = 3) -> dict[str, Any]:
    """Paired per-call overhead of the router (``L100``) in ``target``'s pipeline."""
    return {"target": target.description, **summarise_pairs(list(overhead_pairs(target, repeats, warmup)))}


class _NullDenoiser(torch.nn.Module):
    """A denoiser that costs almost nothing, so the router's own bookkeeping is what gets timed."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, hidden_states, timestep, encoder_hidden_states=None, return_dict=False):
        return (hidden_states,)


def _scheduler_loop(model, scheduler, steps: int) -> float:
    latents = torch.zeros(1, 16, 2, 2, 2)
    start = time.perf_counter()
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        timestep = t.expand(1)
        cond = model(hidden_states=latents, timestep=timestep)[0]
        uncond = model(hidden_states=latents, timestep=timestep)[0]
        latents = scheduler.step(uncond + 5.0 * (cond - uncond), t, latents, return_dict=False)[0]
    return time.perf_counter() - start


def isolated_router_cost(repeats: int, steps: int) -> dict[str, dict[str, float]]:
    """Per-call cost of the router and of a pass-through diffusers hook over a null denoiser (CPU time)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.hooks.hooks import ModelHook

    from ..core.diffusers_internals import register_outermost, remove
    from ..core.router import ModelRouter

    class PassThrough(ModelHook):
        def new_forward(self, module, *args, **kwargs):
            return self.fn_ref.original_forward(*args, **kwargs)

    large, small = _NullDenoiser(), _NullDenoiser()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
    variants = {
        "pass_through_hook": lambda: PassThrough(),
        "router": lambda: ModelRouter(small, PAPER_SCHEDULE, scheduler=scheduler),
    }
    diffs: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for index in range(repeats + 3):
            plain = _scheduler_loop(large, scheduler, steps)
            for name, make_hook in variants.items():
                register_outermost(large, make_hook(), name)
                hooked = _scheduler_loop(large, scheduler, steps)
                remove(large, name)
                if index >= 3:
                    diffs[name].append((hooked - plain) / (2 * steps))
    return {name: spread(values) for name, values in diffs.items()}
