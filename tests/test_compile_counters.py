"""Regional compile's counters are real: graphs are counted when they compile (the warm-up), recompiles after
``mark_warm`` are counted as such, and the bench row reports them."""

import json

import pytest
import torch

from flowblending_accel.accelerators import FlowBlendingConfig, applied_stack, flowblending
from flowblending_accel.cli import main
from flowblending_accel.tiny_models import tiny_wan_pair, tiny_wan_pipeline, wan_call_kwargs

pytestmark = pytest.mark.slow  # each test compiles both tiny models (~20 s on 2 cores)


def _compiled_counters(second_call):
    torch._dynamo.reset()  # no graphs cached from other tests: this warm-up must compile
    large, small = tiny_wan_pair()
    pipe = tiny_wan_pipeline(large)
    with (
        flowblending(pipe, small, FlowBlendingConfig("L40-S40-L20", accelerators=["compile"])),
        torch.inference_mode(),
    ):
        stack = applied_stack(pipe)
        pipe(**wan_call_kwargs(steps=10))
        stack.mark_warm()
        pipe(**second_call)
        return stack.counters()["compile"]


def test_both_models_compile_at_warm_up_and_never_after():
    counters = _compiled_counters(wan_call_kwargs(steps=10))
    assert counters["graphs_compiled"] >= 2  # one graph per width: large and small blocks
    assert counters["recompiles_after_warmup"] == 0 and counters["graph_breaks_after_warmup"] == 0


def test_a_new_shape_after_warm_up_is_a_counted_recompile():
    counters = _compiled_counters({**wan_call_kwargs(steps=10), "height": 32, "width": 32})
    assert counters["recompiles_after_warmup"] >= 2  # both widths see the new token count
    assert counters["graphs_compiled"] == counters["recompiles_after_warmup"] + 2


def test_bench_compile_row_reports_the_warm_up_graphs(tmp_path):
    torch._dynamo.reset()
    args = [
        "bench",
        "--target",
        "random:tiny-wan",
        "--dtype",
        "float32",
        "--height",
        "16",
        "--width",
        "16",
        "--frames",
        "5",
        "--steps",
        "10",
        "--stack",
        "compile",
        "--repeats",
        "2",
        "--threads",
        "1",
        "--output",
        str(tmp_path / "bench"),
    ]
    assert main(args) == 0
    rows = {row["label"]: row for row in json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]}
    compiled = rows["+compile"]["counters"]["compile"]
    assert compiled["graphs_compiled"] >= 2 and compiled["recompiles_after_warmup"] == 0
    assert rows["+compile"]["recompiles_after_warmup"] == 0
