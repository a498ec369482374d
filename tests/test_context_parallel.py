"""Both models context-parallel on diffusers' own engine, two CPU processes over gloo: the routed output
equals the single-process one, every rank routes the same, the small model follows the large one's
parallelism (however the large one got it), a degree the small model cannot take is refused before any
forward, and removal restores both models."""

import atexit
import json
import os
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from diffusers import ContextParallelConfig
from optional import needs_diffusers
from torchrun_on_cpu import launch_env, provide_device_count
from torchrun_on_cpu import torchrun as torchrun_command

from flowblending_accel import ContextParallel, FlowBlendingConfig, RouterListener, flowblending
from flowblending_accel.core.compat import check_context_parallel
from flowblending_accel.core.diffusers_internals import attention_backend_functions, context_parallel_of
from flowblending_accel.core.families import family_for
from flowblending_accel.tiny_models import (
    ltx_call_kwargs,
    tiny_ltx_pair,
    tiny_ltx_pipeline,
    tiny_ltx_transformer,
    tiny_wan_pair,
    tiny_wan_pipeline,
    tiny_wan_transformer,
    wan_call_kwargs,
)

pytestmark = needs_diffusers("context_parallel")

SCHEDULE = "L40-S40-L20"
STEPS = 5


def build(family: str, small_heads: int | None = None):
    """(pipe, small, call kwargs) of one family; the LTX text mask pads its last two tokens."""
    if family == "wan":
        large, small = tiny_wan_pair()
        if small_heads is not None:
            small = tiny_wan_transformer(2, small_heads, seed=1)
        return tiny_wan_pipeline(large), small, wan_call_kwargs(steps=STEPS)
    large, small = tiny_ltx_pair()
    if small_heads is not None:
        small = tiny_ltx_transformer(2, small_heads, seed=1)
    kwargs = ltx_call_kwargs(steps=STEPS)
    for name in ("prompt_attention_mask", "negative_prompt_attention_mask"):
        kwargs[name] = kwargs[name].clone()
        kwargs[name][:, -2:] = 0
    return tiny_ltx_pipeline(large), small, kwargs


class SmallParallelism(RouterListener):
    """Records, at each small call, the Ulysses degree the small model runs with (0: none)."""

    def __init__(self, small) -> None:
        self.small, self.degrees = small, []

    def on_call(self, router, call) -> None:
        if call.record.model == "small":
            config = context_parallel_of(self.small)
            self.degrees.append(config.ulysses_degree if config is not None else 0)


def trace(router) -> list[tuple[int, str]]:
    return [(record.step, record.model) for record in router.last_run.calls]


def hook_names(model) -> list[str]:
    return sorted(
        name
        for module in model.modules()
        for name in getattr(getattr(module, "_diffusers_hook", None), "hooks", {})
    )


def routed_run(family: str, stack: list[str], how: str = "stack") -> dict:
    """One routed call; the large model split by a ``cp`` stack member (a spec, or diffusers' own config as
    a member), or by the user."""
    pipe, small, kwargs = build(family)
    large = pipe.transformer
    before = {"large": hook_names(large), "small": hook_names(small)}
    backends = dict(attention_backend_functions())  # LTX's mask-head patch wraps them while routed
    if how == "parallel":  # diffusers' own config, handed over as a stack member
        stack = [*stack, ContextParallel.from_diffusers(ContextParallelConfig(ulysses_degree=2))]
    if how == "user":
        large.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))
    with flowblending(pipe, small, FlowBlendingConfig(SCHEDULE, accelerators=stack, timing="off")) as router:
        listener = SmallParallelism(small)
        router.add_listener(listener)
        with torch.inference_mode():
            output = pipe(**kwargs).frames
        ran = {"trace": trace(router), "small_degrees": listener.degrees}
    after = {"large": hook_names(large), "small": hook_names(small)}
    parallel_left = [context_parallel_of(model) is not None for model in (large, small)]
    expected = [how == "user", False]  # what the user split stays split; what we split is restored
    if how == "user":
        before["large"] = after["large"]
    registry = attention_backend_functions()
    unwrapped = registry.keys() == backends.keys() and all(registry[n] is f for n, f in backends.items())
    return {"output": output, **ran, "restored": before == after and parallel_left == expected and unwrapped}


def refused_run(family: str) -> dict:
    pipe, small, _ = build(family, small_heads=3)
    calls = []
    for model in (pipe.transformer, small):
        model.register_forward_pre_hook(lambda *_: calls.append(1))
    start = time.perf_counter()
    try:
        with flowblending(pipe, small, FlowBlendingConfig(SCHEDULE, accelerators=["cp:2"])):
            pass
    except ValueError as error:
        return {
            "error": str(error),
            "seconds": time.perf_counter() - start,
            "forwards": len(calls),
            "restored": context_parallel_of(pipe.transformer) is None,
        }
    return {"error": None}


def native_threads() -> int:
    """This process's threads the interpreter does not know of (gloo's workers and loops among them)."""
    return len(os.listdir("/proc/self/task")) - len(threading.enumerate())


def record_native_threads(path: str) -> None:
    with open(path, "w") as file:
        file.write(str(native_threads()))


def _worker(rank: int, world: int, init_file: str, out: str, family: str) -> None:
    torch.set_num_threads(1)
    provide_device_count()
    record_native_threads(f"{out}.{rank}.threads-at-start")
    # registered before the cp mesh's release: runs after it, as the last thing before finalisation
    atexit.register(record_native_threads, f"{out}.{rank}.threads-at-exit")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = routed_run(family, ["cp:2"])
        result["ways"] = {how: routed_run(family, [], how) for how in ("parallel", "user")}
        result["refused"] = refused_run(family)
        torch.save(result, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module", params=["wan", "ltx"])
def two_ranks(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"cp-{request.param}")
    out = str(folder / "rank")
    mp.spawn(_worker, args=(2, str(folder / "init"), out, request.param), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{rank}") for rank in range(2)]
    for rank, result in enumerate(ranks):
        result["threads"] = {
            when: int(Path(f"{out}.{rank}.threads-{when}").read_text()) for when in ("at-start", "at-exit")
        }
    return request.param, ranks


@pytest.mark.timeout(300)
def test_two_ranks_give_the_single_process_output_with_the_same_routing(two_ranks):
    family, ranks = two_ranks
    single = routed_run(family, [])
    for result in [run for rank in ranks for run in (rank, *rank["ways"].values())]:
        assert torch.allclose(result["output"], single["output"], atol=1e-5, rtol=0)
        assert result["trace"] == single["trace"]
    assert {"small", "large"} == {model for _, model in single["trace"]}


@pytest.mark.timeout(300)
def test_the_small_model_followed_into_parallelism_and_removal_restores_both(two_ranks):
    _, ranks = two_ranks
    for result in [run for rank in ranks for run in (rank, *rank["ways"].values())]:
        assert result["small_degrees"] and set(result["small_degrees"]) == {2}
        assert result["restored"]


@pytest.mark.timeout(300)
def test_no_process_group_thread_outlives_the_interpreter(two_ranks):
    """The cp mesh holds process groups; torn down during finalisation, a gloo thread freeing a collective's
    tensor aborted the process now and then. They are released at exit, before finalisation."""
    _, ranks = two_ranks
    for result in ranks:
        assert result["threads"]["at-exit"] <= result["threads"]["at-start"], result["threads"]


@pytest.mark.timeout(300)
def test_a_degree_the_small_model_cannot_take_is_refused_before_any_forward(two_ranks):
    _, ranks = two_ranks
    for result in ranks:
        refused = result["refused"]
        assert (
            refused["error"] is not None
            and "does not divide the small model's 3 attention heads" in refused["error"]
        )
        assert "Degrees that divide both: none above 1" in refused["error"]
        assert refused["forwards"] == 0 and refused["seconds"] < 1.0 and refused["restored"]


def test_the_refusal_names_the_degrees_both_head_counts_take():
    """Wan 14B (40 heads) with 1.3B (12 heads): Ulysses degrees 2 and 4 work, 8 does not."""
    large, small = tiny_wan_transformer(1, 40, head_dim=6), tiny_wan_transformer(1, 12, head_dim=6, seed=1)
    family = family_for(tiny_wan_pipeline(large))
    with pytest.raises(ValueError, match="Degrees that divide both: 2, 4; or set ulysses_anything=True"):
        check_context_parallel(
            large, small, family, "pipe.transformer", ContextParallelConfig(ulysses_degree=8)
        )
    for degree in (2, 4):
        check_context_parallel(
            large, small, family, "pipe.transformer", ContextParallelConfig(ulysses_degree=degree)
        )
    anything = ContextParallelConfig(ulysses_degree=8, ulysses_anything=True)
    check_context_parallel(large, small, family, "pipe.transformer", anything)


def test_cp_needs_torchrun_and_says_so():
    from flowblending_accel.accelerators import parse_accelerator

    with pytest.raises(ValueError, match="this is one process: launch with torchrun --nproc_per_node N"):
        parse_accelerator("cp:2").check_environment("cpu")
    with pytest.raises(ValueError, match="write cp, cp:N, cp:ulysses:N or cp:ring:N"):
        parse_accelerator("cp:sideways:2")


def test_cp_splits_the_models_once():
    """Which caches stack with cp, and how they decide together: test_collective_caches.py."""
    from flowblending_accel.accelerators import parse_accelerator, validate_configs

    with pytest.raises(ValueError, match=r"splits the models twice \['cp:2', 'cp:ring:2'\]"):
        validate_configs([parse_accelerator("cp:2"), parse_accelerator("cp:ring:2")])


LAUNCHER = textwrap.dedent("""
    import sys
    from torchrun_on_cpu import provide_device_count
    provide_device_count()
    from flowblending_accel.cli import main
    sys.exit(main(sys.argv[1:]))
""")
TINY_WAN = """target = "random:tiny-wan"
dtype = "float32"
height = 16
width = 16
frames = 5
steps = 6
"""


def torchrun(tmp_path, *args: str) -> subprocess.CompletedProcess:
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    command = [*torchrun_command(2), str(launcher), *args, "--threads", "1"]
    return subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, timeout=240, env=launch_env()
    )


@pytest.mark.timeout(300)
def test_bench_under_two_processes_reports_both_ranks(tmp_path):
    (tmp_path / "flowblending.toml").write_text(TINY_WAN)
    result = torchrun(tmp_path, "bench", "--stack", "cp:2", "--repeats", "2", "--output", "out")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["label"]: row for row in json.loads((tmp_path / "out" / "bench.json").read_text())["rows"]}
    split = rows["+cp:2"]["ranks"]
    assert split["count"] == 2 and len(split["seconds_per_rank"]) == len(split["flops_per_rank"]) == 2
    assert split["slowest_rank_seconds"] >= min(split["seconds_per_rank"]) > 0
    assert split["flops_total"] == sum(split["flops_per_rank"])
    assert rows["+cp:2"]["counters"]["cp"] == {"ring_degree": 1, "ulysses_degree": 2}
    assert "Across 2 ranks (torchrun)" in (tmp_path / "out" / "bench.md").read_text()
    assert result.stdout.count("bench.json, github-action-benchmark JSON") == 1  # rank 0 alone writes


@pytest.mark.timeout(300)
def test_check_gates_a_context_parallel_scenario_from_the_config_file(tmp_path):
    scenario = """
[check]
expected = "expected.csv"

[[check.scenarios]]
name = "lsl-cp2"
stack = ["cp:2"]
metrics = ["calls.", "flops_total.", "trace_hash", "ranks"]
"""
    (tmp_path / "flowblending.toml").write_text(TINY_WAN + scenario)
    updated = torchrun(tmp_path, "check", "--update")
    assert updated.returncode == 0, updated.stdout + updated.stderr[-3000:]
    expected = (tmp_path / "expected.csv").read_text()
    assert "lsl-cp2,ranks,2,0.0" in expected and "lsl-cp2,calls.small,6,0.0" in expected
    result = torchrun(tmp_path, "check")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "6 of 6 metrics within their margins" in result.stdout


DATA_PARALLEL_GROUPS = textwrap.dedent("""
    import sys
    import torch
    import torch.distributed as dist
    from torchrun_on_cpu import provide_device_count
    provide_device_count()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    from flowblending_accel import FlowBlendingConfig, flowblending
    from flowblending_accel.core.distributed import current, gather_ordered, shard
    from flowblending_accel.tiny_models import tiny_wan_pair, tiny_wan_pipeline, wan_call_kwargs
    context = current()
    large, small = tiny_wan_pair()
    pipe = tiny_wan_pipeline(large)
    mine = shard([0, 1, 2], context.data_parallel(2))
    config = FlowBlendingConfig("L40-S40-L20", accelerators=["cp:2"], timing="off")
    with flowblending(pipe, small, config), torch.inference_mode():
        outputs = [(index, pipe(**wan_call_kwargs(steps=5, seed=seed)).frames) for index, seed in mine]
    merged = gather_ordered(outputs, context, group_size=2)
    if context.is_main:
        torch.save({"seeds": [seed for _, seed in mine], "outputs": merged}, sys.argv[1])
    dist.destroy_process_group()
""")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_data_parallel_groups_of_context_parallel_ranks_give_every_sample_once(tmp_path):
    """4 processes, cp:2: two groups of two ranks, each splitting its own samples; one copy of each."""
    script = tmp_path / "groups.py"
    script.write_text(DATA_PARALLEL_GROUPS)
    command = [*torchrun_command(4), str(script), str(tmp_path / "out.pt")]
    result = subprocess.run(command, capture_output=True, text=True, env=launch_env())
    assert result.returncode == 0, result.stderr[-3000:]
    found = torch.load(tmp_path / "out.pt")
    large, small = tiny_wan_pair()
    pipe = tiny_wan_pipeline(large)
    with flowblending(pipe, small, FlowBlendingConfig(SCHEDULE, timing="off")), torch.inference_mode():
        single = [pipe(**wan_call_kwargs(steps=5, seed=seed)).frames for seed in (0, 1, 2)]
    assert found["seeds"] == [0, 2] and len(found["outputs"]) == 3  # rank 0's group: samples 0 and 2
    for got, expected in zip(found["outputs"], single, strict=True):
        assert torch.allclose(got, expected, atol=1e-5, rtol=0)
