"""Quantization as a stack member: torchao int8 weight-only on the CPU (float8 needs an Ada/Hopper GPU),
under the router, with a cache and compile; removal restores the full-precision weights bit for bit."""

import pytest
import torch
from optional import needs_torchao

from flowblending_accel.accelerators import (
    FlowBlendingConfig,
    Quantize,
    RoutedModels,
    Stack,
    applied_stack,
    apply_flowblending_,
    parse_accelerator,
    remove_flowblending_,
)
from flowblending_accel.cli import main
from flowblending_accel.tiny_models import tiny_wan_pipeline, wan_call_kwargs


def _run(pipe):
    return pipe(**wan_call_kwargs(steps=10)).frames


def test_spec_round_trips_and_bad_modes_are_refused():
    assert parse_accelerator("quantize:int8") == Quantize("int8")
    assert parse_accelerator("quantize") == Quantize("auto") and Quantize("float8").spec == "quantize:float8"
    assert parse_accelerator("quantize:float8:host") == Quantize("float8", "host")
    assert parse_accelerator("quantize:drop") == Quantize("auto", "drop")
    assert parse_accelerator(Quantize("int8", "drop").spec) == Quantize("int8", "drop")
    with pytest.raises(ValueError, match="Quantize.mode='int4' must be one of auto, int8, float8"):
        parse_accelerator("quantize:int4")
    with pytest.raises(ValueError, match=r"write quantize\[:int8\|float8\|auto\]\[:host\|drop\|device\]"):
        parse_accelerator("quantize:int8:host:extra")
    assert Quantize().resolved("cpu") == "int8"
    assert Quantize().keeps("cpu") == "drop" and Quantize().keeps("cuda") == "host"
    assert Quantize("int8", "drop").for_rounds() == Quantize("int8", "device")


def _held_bytes(models, accelerator) -> int:
    """Every tensor the models and the accelerator hold, each storage once (quantized inner tensors too)."""
    from flowblending_accel.accelerators.quantize import _nbytes

    seen, total = set(), 0
    kept = [
        w for table in accelerator._weights.values() for pair in table.values() for w in pair if w is not None
    ]
    for tensor in [t for m in models for t in [*m.parameters(), *m.buffers()]] + kept:
        parts = [tensor] if type(tensor) in (torch.Tensor, torch.nn.Parameter) else None
        if parts is None:
            names, _ = tensor.__tensor_flatten__()
            parts = [getattr(tensor, name) for name in names]
        for part in parts:
            key = part.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += _nbytes(part)
    return total


@needs_torchao
def test_on_a_cpu_quantizing_drops_the_full_precision_weights_and_removal_says_how_to_get_them_back():
    from flowblending_accel import FlowBlendingWarning
    from flowblending_accel.tiny_models import tiny_wan_pair

    large, small = (model.to(torch.bfloat16) for model in tiny_wan_pair())
    pipe = tiny_wan_pipeline(large)
    target = RoutedModels.of(pipe, small)
    accelerator = Quantize("int8").create()
    before = _held_bytes([large, small], accelerator)
    Stack([accelerator]).apply(target)
    after = _held_bytes([large, small], accelerator)
    assert after < 0.6 * before, (after, before)
    counters = accelerator.counters()
    assert counters["large.full_precision"] == "dropped" and counters["large.host_bytes_kept"] == 0
    assert counters["large.device_weight_bytes_after"] < counters["large.device_weight_bytes_before"]
    with pytest.warns(
        FlowBlendingWarning, match="load the models again .from_pretrained.; to keep a host copy"
    ):
        Stack([accelerator]).remove(target)
    assert any(type(p) is not torch.nn.Parameter for p in large.parameters())  # still quantized, and said so
    Stack([accelerator]).apply(target)  # applying again works: the quantized weights are there


@needs_torchao
def test_float8_is_refused_where_it_cannot_run():
    with pytest.raises(ValueError, match="quantize:float8 needs a CUDA GPU of compute capability 8.9"):
        Quantize("float8").check_environment("cpu")


@needs_torchao
def test_int8_under_the_router_then_removed_bit_for_bit(wan_pair):
    large, small = wan_pair
    pipe = tiny_wan_pipeline(large)
    reference = _run(pipe)
    router = apply_flowblending_(
        pipe, small, FlowBlendingConfig("L40-S40-L20", accelerators=["quantize:int8:host"])
    )
    stack = applied_stack(pipe)
    quantized_weights = [p for p in large.parameters() if type(p) is not torch.nn.Parameter]
    routed = _run(pipe)
    counters = stack.counters()["quantize"]
    assert router.last_run.calls_per_model == {"large": 12, "small": 8}
    assert counters["large.mode"] == counters["small.mode"] == "int8"
    assert counters["large.full_precision"] == "host" and counters["large.host_bytes_kept"] > 0
    assert (  # float32 linear weights -> int8 + scales; the other layers stay
        counters["large.device_weight_bytes_after"] < 0.5 * counters["large.device_weight_bytes_before"]
    )
    assert quantized_weights and not torch.equal(routed, reference)
    remove_flowblending_(pipe)
    assert all(type(p) is torch.nn.Parameter for p in large.parameters())
    assert torch.equal(_run(pipe), reference)


@needs_torchao
def test_reapplying_swaps_the_same_quantized_weights_back_in(wan_pair):
    large, small = wan_pair
    pipe = tiny_wan_pipeline(large)
    accelerator = Quantize("int8", "host").create()
    target = RoutedModels.of(pipe, small)
    stack = Stack([accelerator])
    stack.apply(target)
    first = {id(p) for p in large.parameters()}
    stack.remove(target)
    stack.apply(target)
    assert {id(p) for p in large.parameters()} == first  # no second quantization
    stack.remove(target)


@needs_torchao
def test_composes_with_a_cache_and_regional_compile(wan_pair):
    large, small = wan_pair
    pipe = tiny_wan_pipeline(large)
    router = apply_flowblending_(
        pipe,
        small,
        FlowBlendingConfig("L40-S40-L20", accelerators=["quantize:int8:host", "fbc:0.05", "compile"]),
    )
    stack = applied_stack(pipe)
    _run(pipe)
    stack.mark_warm()
    _run(pipe)
    assert router.last_run.calls_per_model == {"large": 12, "small": 8}
    assert stack.counters()["compile"]["recompiles_after_warmup"] == 0
    remove_flowblending_(pipe)


@needs_torchao
def test_a_model_already_quantized_is_refused(wan_pair):
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    large, small = wan_pair
    quantize_(small, Int8WeightOnlyConfig())
    with pytest.raises(ValueError, match="the small model already holds quantized or wrapped weights"):
        Stack.of(["quantize:int8"]).validate(RoutedModels.of(tiny_wan_pipeline(large), small))


@needs_torchao
def test_bench_reports_the_quality_cost_beside_the_speed(tmp_path):
    argv = ["bench", "--stack", "quantize:int8", "--repeats", "1", "--steps", "6", "--output", str(tmp_path)]
    assert main(argv) == 0
    rows = __import__("json").loads((tmp_path / "bench.json").read_text())["rows"]
    quantized = rows[-1]
    assert quantized["label"] == "+quantize:int8" and quantized["quality"]["ssim"] < 1.0
    assert quantized["counters"]["quantize"]["large.mode"] == "int8"


@needs_torchao
def test_removal_leaves_the_modules_as_they_were(wan_pair):
    """A compiled graph guards on each module's attributes: quantizing, then removing, must leave none."""
    large, small = wan_pair
    pipe = tiny_wan_pipeline(large)
    before = {name: set(vars(m)) for name, m in large.named_modules()}
    apply_flowblending_(pipe, small, FlowBlendingConfig("L40-S40-L20", accelerators=["quantize:int8:host"]))
    remove_flowblending_(pipe)
    assert {name: set(vars(m)) for name, m in large.named_modules()} == before


def test_attention_backend_removal_restores_processors_and_the_active_backend(wan_pair):
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    large, small = wan_pair
    pipe = tiny_wan_pipeline(large)
    processors = [m.processor for m in large.modules() if hasattr(m, "processor")]
    before = [dict(vars(p)) for p in processors]
    active = _AttentionBackendRegistry.get_active_backend()[0]
    apply_flowblending_(pipe, small, FlowBlendingConfig("L40-S40-L20", accelerators=["attn:native"]))
    remove_flowblending_(pipe)
    assert [dict(vars(p)) for p in processors] == before
    assert _AttentionBackendRegistry.get_active_backend()[0] == active


@pytest.mark.slow
@needs_torchao
def test_rows_of_other_accelerators_do_not_recompile_a_compiled_row():
    from flowblending_accel.accelerators import parse_accelerator
    from flowblending_accel.bench.runner import Row, cumulative_rows, measure_rows
    from flowblending_accel.core.schedule import Schedule
    from flowblending_accel.targets.presets import preset_target

    target = preset_target("tiny-wan", "cpu", torch.float32, steps=10)
    schedule = Schedule.parse("L40-S40-L20")
    rows = cumulative_rows(schedule, [])
    specs = ("compile", "attn:native", "quantize:int8")
    rows += [Row(f"+{spec}", schedule, (parse_accelerator(spec),)) for spec in specs]
    results = measure_rows(target, rows, 2, count_flops="derived")
    assert {label: m.graphs_after_warmup for label, m in results.items()}["+compile"] == 0
