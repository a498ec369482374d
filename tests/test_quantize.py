"""Quantization as a stack member: torchao int8 weight-only on the CPU (float8 needs an Ada/Hopper GPU),
under the router, with a cache and compile; removal restores the full-precision weights bit for bit."""

import pytest
import torch
from optional import needs_torchao

from flowblending_accel.accelerators import (
    Quantize,
    Stack,
    StackTarget,
    apply_stack,
    parse_accelerator,
    remove_stack,
)
from flowblending_accel.cli import main
from flowblending_accel.testing import tiny_wan_pipeline, wan_call_kwargs


def _run(pipe):
    return pipe(**wan_call_kwargs(steps=10)).frames


def test_spec_round_trips_and_bad_modes_are_refused():
    assert parse_accelerator("quantize:int8") == Quantize("int8")
    assert parse_accelerator("quantize") == Quantize("auto") and Quantize("float8").spec == "quantize:float8"
    with pytest.raises(ValueError, match="Quantize.mode='int4' must be one of auto, int8, float8"):
        parse_accelerator("quantize:int4")
    assert Quantize().resolved("cpu") == "int8"


@needs_torchao
def test_float8_is_refused_where_it_cannot_run():
    with pytest.raises(ValueError, match="quantize:float8 needs a CUDA GPU of compute capability 8.9"):
        Quantize("float8").check_environment("cpu")


@needs_torchao
def test_int8_under_the_router_then_removed_bit_for_bit(wan_pair):
    large, small = wan_pair
    pipe = tiny_wan_pipeline(large)
    reference = _run(pipe)
    router, stack = apply_stack(pipe, small, "L40-S40-L20", ["quantize:int8"])
    quantized_weights = [p for p in large.parameters() if type(p) is not torch.nn.Parameter]
    routed = _run(pipe)
    counters = stack.counters()["quantize"]
    assert router.last_run.calls_per_model == {"large": 12, "small": 8}
    assert counters["large.mode"] == counters["small.mode"] == "int8"
    assert (
        counters["large.weight_bytes_after"] < 0.35 * counters["large.weight_bytes_before"]
    )  # int8 + scales
    assert quantized_weights and not torch.equal(routed, reference)
    remove_stack(pipe)
    assert all(type(p) is torch.nn.Parameter for p in large.parameters())
    assert torch.equal(_run(pipe), reference)


@needs_torchao
def test_reapplying_swaps_the_same_quantized_weights_back_in(wan_pair):
    large, small = wan_pair
    pipe = tiny_wan_pipeline(large)
    accelerator = Quantize("int8").create()
    target = StackTarget.of(pipe, small)
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
    router, stack = apply_stack(pipe, small, "L40-S40-L20", ["quantize:int8", "fbc:0.05", "compile"])
    _run(pipe)
    stack.mark_warm()
    _run(pipe)
    assert router.last_run.calls_per_model == {"large": 12, "small": 8}
    assert stack.counters()["compile"]["recompiles_after_warmup"] == 0
    remove_stack(pipe)


@needs_torchao
def test_a_model_already_quantized_is_refused(wan_pair):
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    large, small = wan_pair
    quantize_(small, Int8WeightOnlyConfig())
    with pytest.raises(ValueError, match="the small model already holds quantized or wrapped weights"):
        Stack.of(["quantize:int8"]).validate(StackTarget.of(tiny_wan_pipeline(large), small))


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
    apply_stack(pipe, small, "L40-S40-L20", ["quantize:int8"])
    remove_stack(pipe)
    assert {name: set(vars(m)) for name, m in large.named_modules()} == before


def test_attention_backend_removal_restores_processors_and_the_active_backend(wan_pair):
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    large, small = wan_pair
    pipe = tiny_wan_pipeline(large)
    processors = [m.processor for m in large.modules() if hasattr(m, "processor")]
    before = [dict(vars(p)) for p in processors]
    active = _AttentionBackendRegistry.get_active_backend()[0]
    apply_stack(pipe, small, "L40-S40-L20", ["attn:native"])
    remove_stack(pipe)
    assert [dict(vars(p)) for p in processors] == before
    assert _AttentionBackendRegistry.get_active_backend()[0] == active


@pytest.mark.slow
@needs_torchao
def test_rows_of_other_accelerators_do_not_recompile_a_compiled_row():
    from flowblending_accel.bench.runner import Row, cumulative_rows, measure_rows
    from flowblending_accel.targets.presets import preset_target

    target = preset_target("tiny-wan", "cpu", torch.float32, steps=10)
    rows = cumulative_rows("L40-S40-L20", [])
    rows += [Row(f"+{spec}", "L40-S40-L20", (spec,)) for spec in ("compile", "attn:native", "quantize:int8")]
    results = measure_rows(target, rows, 2, count_flops="derived")
    assert {label: m.graphs_after_warmup for label, m in results.items()}["+compile"] == 0
