"""Two CPU processes with the gloo backend: sharded generation equals one process; stats sum; routing
agrees."""

import json
import os
import subprocess

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchrun_on_cpu import launch_env, torchrun

from flowblending_accel import apply_flowblending_
from flowblending_accel.core.distributed import (
    DistContext,
    RankConsistency,
    gather_ordered,
    init_from_env,
    merge_groups,
    shard,
    sum_counts,
)
from flowblending_accel.tiny_models import tiny_wan_pair, tiny_wan_pipeline, wan_call_kwargs

SEEDS = [0, 1, 2, 3, 4]


def _generate(seeds, schedule="L40-S40-L20", check_ranks=False):
    large, small = tiny_wan_pair()
    pipe = tiny_wan_pipeline(large)
    router = apply_flowblending_(pipe, small, schedule)
    if check_ranks:  # context-parallel style: every rank runs the same sample
        router.add_listener(RankConsistency())
    outputs, calls = [], {}
    for index, seed in seeds:
        outputs.append((index, pipe(**wan_call_kwargs(steps=6, seed=seed)).frames))
        for model, count in router.last_run.calls_per_model.items():
            calls[model] = calls.get(model, 0) + count
    return outputs, calls


def _worker(rank, world, init_file, result_file, mismatch):
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    context = init_from_env()
    try:
        if mismatch:
            schedule = "L40-S40-L20" if rank == 0 else "L20-S60-L20"
            try:
                _generate([(0, 0)], schedule, check_ranks=True)
            except RuntimeError as error:
                torch.save(str(error), f"{result_file}.{rank}")
            return
        outputs, calls = _generate(shard(SEEDS, context))
        merged = gather_ordered(outputs, context)
        totals = sum_counts(calls, context)
        if context.is_main:
            torch.save({"outputs": merged, "calls": totals}, result_file)
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path, mismatch=False):
    result = tmp_path / "result.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(result), mismatch), nprocs=2, join=True)
    return result


@pytest.mark.timeout(300)
def test_two_processes_match_one(tmp_path):
    single_outputs, single_calls = _generate(list(enumerate(SEEDS)))
    result = torch.load(_spawn(tmp_path))
    assert len(result["outputs"]) == len(SEEDS)
    for (_, expected), got in zip(single_outputs, result["outputs"], strict=True):
        assert torch.equal(expected, got)
    assert result["calls"] == single_calls == {"large": 3 * 2 * 5, "small": 3 * 2 * 5}  # 6 steps: L2-S3-L1


@pytest.mark.timeout(300)
def test_ranks_disagreeing_on_routing_fail_loudly(tmp_path):
    result = _spawn(tmp_path, mismatch=True)
    for rank in (0, 1):
        assert "ranks disagree on the routing" in torch.load(f"{result}.{rank}")


def test_single_process_helpers():
    context = DistContext()
    assert shard(["a", "b", "c"], DistContext(1, 2)) == [(1, "b")]
    assert gather_ordered([(1, "b"), (0, "a")], context) == ["a", "b"]
    assert sum_counts({"large": 3}, context) == {"large": 3}


def test_data_parallel_groups_of_context_parallel_ranks():
    """4 processes with cp:2: ranks 0-1 and 2-3 each split one sample; samples shard across the 2 groups and
    gathering keeps one copy per group."""
    views = [DistContext(rank, 4).data_parallel(2) for rank in range(4)]
    assert [(v.rank, v.world_size) for v in views] == [(0, 2), (0, 2), (1, 2), (1, 2)]
    shares = [shard(["a", "b", "c"], view) for view in views]
    assert shares == [[(0, "a"), (2, "c")], [(0, "a"), (2, "c")], [(1, "b")], [(1, "b")]]
    assert merge_groups(shares, 2) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="groups of 3 do not divide the 4 processes"):
        DistContext(0, 4).data_parallel(3)


DEMO = ["demo", "--prompts", "a 3 moving right", "a 7 moving left", "--steps", "4", "--chunk-size", "1"]
DEMO += ["--threads", "1", "--timing-seconds", "0"]


@pytest.mark.timeout(300)
def test_the_demo_under_torchrun_shards_the_samples_and_reports_what_one_process_does(tmp_path):
    from flowblending_accel.cli import main

    assert main([*DEMO, "--output", str(tmp_path / "one")]) == 0
    launched = subprocess.run(
        [*torchrun(2), "-m", "flowblending_accel.cli", *DEMO, "--output", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        timeout=240,
        env=launch_env(),
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    one, two = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("one", "two"))
    assert two["context"]["ranks"] == 2 and two["context"]["samples"] == one["context"]["samples"] == 2
    for name, row in one["rows"].items():
        for metric in ("calls_per_sample", "psnr_vs_lll", "digit_accuracy", "direction_accuracy"):
            assert two["rows"][name].get(metric) == row.get(metric), (name, metric)
        fd = two["rows"][name]["fd_to_real"]["value"]  # the classifier's features in other batches
        assert fd == pytest.approx(row["fd_to_real"]["value"], rel=1e-5)
    assert launched.stdout.count("results.json and grid written") == 1  # rank 0 alone writes
