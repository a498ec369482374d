"""`bench` end to end on a tiny random-weight config, and the accelerators' refusals."""

import json

import pytest

from flowblending_accel.accelerators import (
    AttentionBackend,
    FirstBlockCache,
    FlowBlendingConfig,
    MagCache,
    PyramidAttentionBroadcast,
    RoutedModels,
    Stack,
    StepReduction,
    TensorRT,
    apply_flowblending_,
    parse_accelerator,
    remove_flowblending_,
)
from flowblending_accel.cli import main
from flowblending_accel.tiny_models import tiny_wan_pair, tiny_wan_pipeline, wan_call_kwargs


def test_bench_cumulative_rows_on_tiny_random_weights(tmp_path, capsys):
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
        "dpm++:6",
        "fbc:0.2",
        "--repeats",
        "2",
        "--threads",
        "1",
        "--output",
        str(tmp_path / "bench"),
    ]
    assert main(args) == 0
    document = json.loads((tmp_path / "bench" / "bench.json").read_text())
    labels = [row["label"] for row in document["rows"]]
    assert labels == ["baseline (large only)", "+FlowBlending L40-S40-L20", "+dpm++:6", "+fbc:0.2"]
    assert "skipped" not in document  # a row that cannot run here is refused before the work
    rows = {row["label"]: row for row in document["rows"]}
    assert rows["baseline (large only)"]["calls"] == {"large": 20}
    assert rows["+FlowBlending L40-S40-L20"]["calls"] == {"large": 12, "small": 8}
    assert rows["+dpm++:6"]["steps"] == 6 and rows["+fbc:0.2"]["stack"] == ["dpm++:6", "fbc:0.2"]
    assert rows["+FlowBlending L40-S40-L20"]["flop_reduction"] > 1.0
    attention = rows["+fbc:0.2"]["counters"]["attention"]  # cache hits, counted from attention computes
    assert (
        0.0 <= attention["attention_skipped.large"] <= 1.0 and attention["segment_starts_full_compute"] == 1.0
    )
    assert "attention" not in rows["+dpm++:6"]["counters"]
    assert all(len(row["seconds"]["all"]) == 2 for row in document["rows"])
    bigger = json.loads((tmp_path / "bench" / "bench-bigger-is-better.json").read_text())
    assert {entry["unit"] for entry in bigger} == {"x"} and len(bigger) == 4
    assert (tmp_path / "bench" / "bench.png").stat().st_size > 1000
    assert "| +FlowBlending L40-S40-L20 |" in (tmp_path / "bench" / "bench.md").read_text()
    progress = capsys.readouterr().err  # each row's warm-up said as it starts, not a silent 0/N
    for label in labels:
        assert f" — warm-up: {label}\n" in progress


def test_bench_rejects_a_typo_before_building_anything(capsys):
    assert main(["bench", "--stack", "fbcc"]) == 2
    assert "accelerator 'fbcc' is unknown" in capsys.readouterr().err


@pytest.mark.parametrize(
    "accelerators, message",
    [
        ([TensorRT()], "needs a CUDA GPU"),
        ([AttentionBackend("flash")], "needs the `flash_attn` package|runs on CUDA only"),
        ([StepReduction("ddim", 10)], "does not fit the wan pipeline's flow-matching"),
        ([FirstBlockCache(), PyramidAttentionBroadcast()], "several feature caches"),
    ],
)
def test_stack_refusals_name_the_reason(accelerators, message):
    pipe = tiny_wan_pipeline()
    with pytest.raises(ValueError, match=message):
        Stack.of(accelerators).validate(RoutedModels.of(pipe, tiny_wan_pair()[1]))


def test_parse_and_magcache_needs_ratios():
    assert (
        isinstance(parse_accelerator("unipc:12"), StepReduction) and parse_accelerator("unipc:12").steps == 12
    )
    with pytest.raises(ValueError, match="mag_ratios per model"):
        MagCache()
    with pytest.raises(ValueError, match="accelerator 'teacache' is unknown"):
        parse_accelerator("teacache")


def test_stack_remove_restores_the_pipeline():
    large, small = tiny_wan_pair()
    pipe = tiny_wan_pipeline(large)
    reference = pipe(**wan_call_kwargs(steps=8)).frames
    scheduler = pipe.scheduler
    apply_flowblending_(pipe, small, FlowBlendingConfig("L40-S40-L20", accelerators=["unipc:6", "fbc:0.1"]))
    assert type(pipe.scheduler).__name__ == "UniPCMultistepScheduler" and large._cache_config is not None
    pipe(**wan_call_kwargs(steps=6))
    remove_flowblending_(pipe)
    assert pipe.scheduler is scheduler and large._cache_config is None and small._cache_config is None
    assert (pipe(**wan_call_kwargs(steps=8)).frames == reference).all()


def test_failed_apply_undoes_what_was_done():
    large, small = tiny_wan_pair()
    pipe = tiny_wan_pipeline(large)
    scheduler = pipe.scheduler
    with pytest.raises(TypeError):
        apply_flowblending_(
            pipe,
            small,
            FlowBlendingConfig("L40-S40-L20", accelerators=["unipc:6", "fbc:0.1"], not_an_option=True),
        )
    assert (
        pipe.scheduler is scheduler
        and large._cache_config is None
        and not hasattr(pipe, "_flowblending_stack")
    )


def test_a_solver_that_cannot_take_ltx_sigmas_is_refused_at_apply():
    from flowblending_accel.tiny_models import tiny_ltx_pair, tiny_ltx_pipeline

    large, small = tiny_ltx_pair()
    pipe = tiny_ltx_pipeline(large)
    with pytest.raises(
        ValueError, match=r"ltx pipeline hands the scheduler its own sigma grid, which 'dpm\+\+'"
    ):
        apply_flowblending_(pipe, small, FlowBlendingConfig("L40-S40-L20", accelerators=["dpm++:10"]))
    apply_flowblending_(pipe, small, FlowBlendingConfig("L40-S40-L20", accelerators=["unipc:10"]))
    remove_flowblending_(pipe)
