"""The suite's cost model: how long each part will take and how much memory each row needs, before any
model is built.

Per-call FLOPs are counted exactly, on the ``meta`` device (the preset pipeline built without weights, its
first denoiser call captured, each model counted once with ``torch.utils.flop_counter``), and turned into
time at a stated throughput. Build, compile and quantize times, start-up and the install are stated per
device profile. The estimate assumes no cache hit and no speed-up from compile, attention backend or
quantization: it is an upper bound for the rows that are meant to be faster.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from .plan import Section, Suite, SuiteRow, SuiteWorkload

GIB = 2**30


@dataclass(frozen=True)
class DeviceProfile:
    """What one machine is assumed to do. Every number is stated, not measured, until a run says otherwise
    (``--suite render`` sets each part's estimate beside its measured wall time)."""

    name: str
    flops_per_second: float  # sustained on a DiT denoiser call
    call_seconds: float  # fixed cost of one denoiser call: kernel launches, Python, hooks
    run_seconds: float  # a pipeline call outside the denoiser (latent output: scheduler, embeddings)
    build_parameters_per_second: float  # random initialisation
    compile_seconds: float  # one graph of a regional compile (inductor)
    engine_seconds: float  # one TensorRT engine build of one block width
    quantize_parameters_per_second: float
    transfer_bytes_per_second: float  # host <-> device copies (offload)
    startup_seconds: float  # a fresh Python with torch and diffusers imported
    install_seconds: float  # a part's offline wheel install


PROFILES = {
    # H100 SXM: 989 dense bf16 TFLOP/s at peak; DiT calls in eager diffusers sustain about 40 % of it.
    "gpu": DeviceProfile(
        "H100-class GPU (stated: 400 TFLOP/s sustained bf16)",
        flops_per_second=400e12,
        call_seconds=0.01,
        run_seconds=0.05,
        build_parameters_per_second=3e9,
        compile_seconds=8.0,
        engine_seconds=180.0,
        quantize_parameters_per_second=2e9,
        transfer_bytes_per_second=20e9,
        startup_seconds=10.0,
        install_seconds=15.0,
    ),
    # This project's 2-core CPU on the tiny presets: per-call overhead dominates, compile is slow.
    "rehearsal": DeviceProfile(
        "2-core CPU (stated: 20 GFLOP/s float32)",
        flops_per_second=20e9,
        call_seconds=0.004,
        run_seconds=0.02,
        build_parameters_per_second=2e7,
        compile_seconds=2.0,
        engine_seconds=180.0,
        quantize_parameters_per_second=1e7,
        transfer_bytes_per_second=5e9,
        startup_seconds=6.0,
        install_seconds=0.0,
    ),
}


@dataclass(frozen=True)
class WorkloadCosts:
    """One workload's counted facts: per-call FLOPs (and the repeated blocks' share), parameters, weight
    bytes and the largest activation of a call, per model (``large``, ``small``, ``pipeline``: the rest)."""

    flops: dict[str, int]
    block_flops: dict[str, int]
    parameters: dict[str, int]
    weight_bytes: dict[str, int]
    largest_activation_bytes: int
    calls_per_step: int


def _weights(module) -> tuple[int, int]:
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() for t in tensors), sum(t.numel() * t.element_size() for t in tensors)


@cache
def workload_costs(workload: SuiteWorkload, dtype: str) -> WorkloadCosts:
    """Count ``workload`` on the ``meta`` device: nothing is allocated, nothing computed."""
    import torch

    from ...metrics.flops import count_call, first_call_arguments
    from ...targets.presets import preset_target

    height, width, frames = workload.size
    target = preset_target(
        workload.preset, "meta", getattr(torch, dtype), height, width, frames, workload.steps
    )
    args, kwargs = first_call_arguments(target.pipe, target.large, target.call_kwargs(0))
    counts = {
        "large": count_call(target.large, args, kwargs),
        "small": count_call(target.small, args, kwargs),
    }
    models = {"large": target.large, "small": target.small}
    rest = [
        m for m in target.pipe.components.values() if isinstance(m, torch.nn.Module) and m is not target.large
    ]
    weights = {label: _weights(model) for label, model in models.items()}
    weights["pipeline"] = tuple(map(sum, zip(*(_weights(m) for m in rest), strict=True))) if rest else (0, 0)
    separate = target.family.separate_cfg_calls and target.guidance_scale > 1
    return WorkloadCosts(
        flops={label: count.flops for label, count in counts.items()},
        block_flops={label: count.block_flops for label, count in counts.items()},
        parameters={label: value[0] for label, value in weights.items()},
        weight_bytes={label: value[1] for label, value in weights.items()},
        largest_activation_bytes=max(count.largest_tensor_bytes for count in counts.values()),
        calls_per_step=2 if separate else 1,
    )


def _reduced_steps(row: SuiteRow, steps: int) -> int:
    reduced = [config.steps for config in row.configs() if config.kind == "scheduler"]
    return reduced[0] if reduced else steps


def row_calls(row: SuiteRow, workload: SuiteWorkload, costs: WorkloadCosts) -> dict[str, int]:
    """Denoiser calls per model of one run of ``row``."""
    from ...core.schedule import Schedule

    models = Schedule.parse(row.schedule).models_for_step_count(_reduced_steps(row, workload.steps))
    letters = {"L": "large", "S": "small"}
    calls = {"large": 0, "small": 0}
    for model in models:
        calls[letters.get(model, model)] += costs.calls_per_step
    return calls


def row_seconds(row: SuiteRow, workload: SuiteWorkload, dtype: str, profile: DeviceProfile) -> float:
    """One timed run of ``row``."""
    costs = workload_costs(workload, dtype)
    calls = row_calls(row, workload, costs)
    seconds = profile.run_seconds + sum(
        n * (costs.flops[model] / profile.flops_per_second + profile.call_seconds)
        for model, n in calls.items()
    )
    if "memory" in row.kinds():  # two switches a run; prefetch overlaps, the bound assumes it does not
        seconds += (
            2
            * max(costs.weight_bytes["large"], costs.weight_bytes["small"])
            / (profile.transfer_bytes_per_second)
        )
    return seconds


def warmup_extra_seconds(row: SuiteRow, workload: SuiteWorkload, dtype: str, profile: DeviceProfile) -> float:
    """What ``row``'s first (warm-up) run adds on top of a timed one: compiling, quantizing."""
    costs = workload_costs(workload, dtype)
    kinds, extra = row.kinds(), 0.0
    if "compile" in kinds:  # a graph per block width, and with a cache's hooks a variant per branch and block
        extra += 2 * (8 if "cache" in kinds else 1) * profile.compile_seconds
    if "engine" in kinds:
        extra += 2 * profile.engine_seconds
    if "quantize" in kinds:
        extra += (
            costs.parameters["large"] + costs.parameters["small"]
        ) / profile.quantize_parameters_per_second
    return extra


def build_seconds(workload: SuiteWorkload, dtype: str, profile: DeviceProfile) -> float:
    costs = workload_costs(workload, dtype)
    return sum(costs.parameters.values()) / profile.build_parameters_per_second


def _installed(row: SuiteRow) -> bool:
    """Whether the row's members are installed here (a TensorRT row runs only where torch-tensorrt is)."""
    import importlib.util

    return "engine" not in row.kinds() or importlib.util.find_spec("torch_tensorrt") is not None


def section_seconds(section: Section, dtype: str, profile: DeviceProfile) -> dict[str, float]:
    """The estimate of one section, by stage (``total`` is their sum)."""
    work, estimate = section.workload, {"startup": profile.startup_seconds}
    estimate["build"] = build_seconds(work, dtype, profile)
    if section.kind == "overhead":  # launch-bound: a tiny pipeline, plain and routed, plus the bare router
        rows = 2 * (section.repeats + 3) * row_seconds(SuiteRow("L", "L100"), work, dtype, profile)
        estimate["rounds"] = rows + 5 * section.repeats * 40 * 2 * 1e-4
    elif section.kind == "smoke":  # a warm-up pair and ``repeats`` pairs, routed all-large vs unwrapped
        estimate["rounds"] = (
            2 * (section.repeats + 1) * row_seconds(SuiteRow("L", "L100"), work, dtype, profile)
        )
    else:
        rows = [row for row in section.measured_rows if _installed(row)]
        once = sum(row_seconds(row, work, dtype, profile) for row in rows)
        estimate["flop_count"] = 2 * row_seconds(SuiteRow("L", "L100"), work, dtype, profile) / 20
        estimate["warmup"] = once + sum(warmup_extra_seconds(row, work, dtype, profile) for row in rows)
        estimate["rounds"] = section.repeats * once
    estimate["total"] = sum(estimate.values())
    return estimate


def part_seconds(suite: Suite, part_name: str, profile: DeviceProfile) -> dict[str, float]:
    """Each section's estimate, the install, and the part's ``total``."""
    part = suite.part(part_name)
    estimate = {"install": profile.install_seconds}
    for section in part.sections:
        estimate[section.name] = section_seconds(section, suite.dtype, profile)["total"]
    estimate["total"] = sum(estimate.values())
    return estimate


def row_memory(row: SuiteRow, workload: SuiteWorkload, dtype: str) -> dict[str, int]:
    """Estimated peak bytes of ``row`` on the device and on the host (besides the interpreter itself)."""
    costs = workload_costs(workload, dtype)
    weights = costs.weight_bytes
    resident = weights["large"] + weights["small"] + weights["pipeline"]
    host, kinds = 0, row.kinds()
    if "quantize" in kinds:  # quantized a layer at a time; the full-precision weights wait on the host
        host += weights["large"] + weights["small"]
    if "memory" in kinds:  # the inactive model waits on the host; while one is prefetched both are here
        host += max(weights["large"], weights["small"])
    activations = 3 * costs.largest_activation_bytes  # a layer's input, its widest output, the next
    return {"device": resident + activations, "host": host}


def memory_refusal(
    need: dict[str, int], device_total: float | None, host_total: int, on_gpu: bool
) -> str | None:
    """Why a row that needs ``need`` (:func:`row_memory`) is refused: its device peak above 90 % of
    ``device_total``, or its host peak (the device's too, on a CPU) above half of ``host_total``; or None."""
    from ...support.memory import gib

    if device_total and need["device"] > 0.9 * device_total:
        return f"estimated peak {gib(need['device'])} is above 90 % of the GPU's {gib(device_total)}"
    host = need["host"] + (0 if on_gpu or device_total else need["device"])
    if host_total and host > 0.5 * host_total:
        return f"estimated host peak {gib(host)} is above half the host's {gib(host_total)}"
    return None
