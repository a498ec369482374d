"""Caches that decide together: beside ``cp:2`` (two CPU processes over gloo, launched by torchrun) a cache
that decides from the activations whether to skip decides from the whole sequence, so both ranks skip the
same calls as one process does and give its output; a case built so the ranks' own shards would decide
differently finishes, with both ranks taking the single process's decision. Sizes: 32x32, so the sequence
(8 tokens) splits in two shards of 4 that no broadcast can hide."""

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from optional import needs_cachedit
from torchrun_on_cpu import launch_env
from torchrun_on_cpu import torchrun as torchrun_command

from flowblending_accel.accelerators import (
    CacheDiT,
    FirstBlockCache,
    FlowBlendingConfig,
    MagCache,
    PyramidAttentionBroadcast,
    RoutedModels,
    SeaCache,
    Stack,
    TaylorSeer,
    applied_stack,
    flowblending,
    parse_accelerator,
    validate_configs,
)
from flowblending_accel.core.diffusers_internals import context_parallel_of, first_block_cache_heads
from flowblending_accel.tiny_models import text_embeddings, tiny_wan_pair, tiny_wan_pipeline, wan_call_kwargs

SCHEDULE = "L40-S40-L20"
STEPS = 8
# Single process, these settings: the first block's relative change is 0.078..0.15 at the calls that decide,
# none within 0.005 of 0.09; 2 large and 2 small calls skip their remaining blocks.
THRESHOLD = 0.09
TOLERANCE = 1e-5  # cp:2 vs one process: the same decisions, attention summed in another order


def call_kwargs() -> dict:
    return {**wan_call_kwargs(steps=STEPS), "height": 32, "width": 32}


class CallRecorder:
    """Per denoiser call, in call order: ``[model label, whether its last block computed, how many
    self-attentions computed]`` (the first block is entered at every call, whatever the cache)."""

    def __init__(self, models: dict) -> None:
        self.calls: list[list] = []
        for label, model in models.items():
            model.blocks[0].register_forward_pre_hook(
                lambda *_, label=label: self.calls.append([label, False, 0])
            )
            model.blocks[-1].ffn.register_forward_pre_hook(lambda *_: self.calls[-1].__setitem__(1, True))
            for block in model.blocks:
                block.attn1.to_q.register_forward_pre_hook(lambda *_: self._attended())

    def _attended(self) -> None:
        self.calls[-1][2] += 1


def pipeline_run(cache, parallel: list[str]) -> dict:
    """One routed pipeline call with ``cache`` (and ``parallel``): output, per-call tails, counters."""
    large, small = tiny_wan_pair()
    pipe = tiny_wan_pipeline(large)
    tails = CallRecorder({"large": large, "small": small})
    config = FlowBlendingConfig(SCHEDULE, accelerators=[cache, *parallel], timing="off")
    with flowblending(pipe, small, config), torch.inference_mode():
        output = pipe(**call_kwargs()).frames
        counters = applied_stack(pipe).counters()[cache.name]
        split = [context_parallel_of(model) is not None for model in (large, small)]
    return {"output": output, "tails": tails.calls, "counters": counters, "split": split}


# The constructed disagreement: two calls of the large model (one cache context) whose second input changes
# only the second latent frame, i.e. the second shard of the sequence; the first shard changes only through
# attention. Each rank's own shard would say "skip" on one rank and "compute" on the other.
def constructed_inputs() -> tuple[dict, dict]:
    generator = torch.Generator().manual_seed(3)
    first = torch.randn(1, 16, 2, 4, 4, generator=generator)
    second = first.clone()
    second[:, :, 1] += 2.0 * torch.randn(1, 16, 4, 4, generator=generator)
    common = {"timestep": torch.tensor([500.0]), "encoder_hidden_states": text_embeddings()[0]}
    return {"hidden_states": first, **common}, {"hidden_states": second, **common}


def first_block_changes() -> dict:
    """The first block's relative change between the two constructed calls, per shard and whole."""
    residuals = []
    model = tiny_wan_pair()[0]
    model.blocks[0].register_forward_hook(lambda _, args, out: residuals.append(out - args[0]))
    with torch.inference_mode():
        for inputs in constructed_inputs():
            model(**inputs, return_dict=False)

    def change(current, previous):
        return ((current - previous).abs().sum() / previous.abs().sum()).item()

    before, after = residuals
    shards = [change(a, b) for a, b in zip(after.chunk(2, dim=1), before.chunk(2, dim=1), strict=True)]
    return {"shards": shards, "whole": change(after, before)}


def constructed_run(threshold: float, parallel: list[str]) -> dict:
    """The two constructed calls of the large model under FBC at ``threshold`` (and ``parallel``)."""
    large, small = tiny_wan_pair()
    target = RoutedModels.of(tiny_wan_pipeline(large), small)
    stack = Stack.of([FirstBlockCache(threshold), *parallel])
    tails = CallRecorder({"large": large})
    stack.apply(target)
    try:
        with torch.inference_mode(), large.cache_context("cond"):
            outputs = [large(**inputs, return_dict=False)[0] for inputs in constructed_inputs()]
    finally:
        stack.remove(target)
    return {"output": outputs[-1], "tails": tails.calls}


OTHERS = ("taylorseer", "pab", "seacache", "magcache", "cache-dit")


def other_cache(name: str, ratios: dict | None = None):
    """Each other cache, set to skip often on these tiny models."""
    return {
        "taylorseer": lambda: TaylorSeer(options=dict(cache_interval=3, disable_cache_before_step=1)),
        "pab": lambda: PyramidAttentionBroadcast(
            options=dict(
                spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(0, 1000)
            )
        ),
        "seacache": lambda: SeaCache(options=dict(threshold=0.5)),
        "magcache": lambda: MagCache(
            mag_ratios=ratios,
            options=dict(num_inference_steps=STEPS, threshold=0.5, max_skip_steps=2, retention_ratio=0.2),
        ),
        "cache-dit": lambda: CacheDiT(
            options=dict(
                Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=1, residual_diff_threshold=0.2
            )
        ),
    }[name]()


def on_each_rank(request_path: str, out: str) -> None:
    """What each torchrun rank runs (see LAUNCHER): the runs of the request, saved per rank."""
    import datetime

    import torch.distributed as dist
    from torchrun_on_cpu import provide_device_count

    provide_device_count()
    torch.set_num_threads(1)
    # A rank left waiting in a collective the other skipped fails after a minute instead of hanging.
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    try:
        request = json.loads(Path(request_path).read_text())
        result = {
            "fbc": pipeline_run(FirstBlockCache(THRESHOLD), ["cp:2"]),
            "constructed": [constructed_run(t, ["cp:2"]) for t in request["thresholds"]],
            "others": {
                name: pipeline_run(other_cache(name, request.get("ratios")), ["cp:2"])
                for name in request["others"]
            },
        }
        torch.save(result, f"{out}.{dist.get_rank()}")
    finally:
        dist.destroy_process_group()


LAUNCHER = textwrap.dedent("""
    import sys
    from test_collective_caches import on_each_rank
    on_each_rank(*sys.argv[1:])
""")


def torchrun_two_ranks(folder: Path, request: dict) -> list[dict]:
    (folder / "launch.py").write_text(LAUNCHER)
    (folder / "request.json").write_text(json.dumps(request))
    out = folder / "rank"
    command = [*torchrun_command(2), str(folder / "launch.py"), str(folder / "request.json"), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=400, env=launch_env())
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(f"{out}.{rank}") for rank in range(2)]


def thresholds_either_side(changes: dict) -> list[float]:
    """Two thresholds between the shards' changes: one the whole sequence's change passes (compute), one
    it does not (skip); each away from it."""
    low, high = sorted(changes["shards"])
    whole = changes["whole"]
    return [(low + whole) / 2, (whole + high) / 2]


@pytest.fixture(scope="module")
def constructed() -> dict:
    changes = first_block_changes()
    return {"changes": changes, "thresholds": thresholds_either_side(changes)}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, constructed) -> list[dict]:
    request = {"thresholds": constructed["thresholds"], "others": []}
    return torchrun_two_ranks(tmp_path_factory.mktemp("collective"), request)


@pytest.mark.timeout(500)
def test_fbc_beside_cp_skips_the_calls_one_process_skips_and_gives_its_output(two_ranks):
    single = pipeline_run(FirstBlockCache(THRESHOLD), [])
    assert single["counters"]["large.tail_skipped"] == 2 and single["counters"]["small.tail_skipped"] == 2
    for rank in two_ranks:
        ran = rank["fbc"]
        assert ran["split"] == [True, True]  # both models ran split (the small one followed)
        assert ran["tails"] == single["tails"] and ran["counters"] == single["counters"]
        assert torch.allclose(ran["output"], single["output"], atol=TOLERANCE, rtol=0)


@pytest.mark.timeout(500)
def test_shards_that_would_disagree_decide_together_as_one_process(two_ranks, constructed):
    low, high = sorted(constructed["changes"]["shards"])
    for index, threshold in enumerate(constructed["thresholds"]):
        assert low < threshold < high  # alone, one rank would skip and the other compute (and wait)
        single = constructed_run(threshold, [])
        computes = constructed["changes"]["whole"] > threshold
        assert [tail for _, tail, _ in single["tails"]] == [True, computes]
        for rank in two_ranks:  # both finished: each took the whole sequence's decision
            ran = rank["constructed"][index]
            assert ran["tails"] == single["tails"]
            assert torch.allclose(ran["output"], single["output"], atol=TOLERANCE, rtol=0)
    assert [constructed["changes"]["whole"] > t for t in constructed["thresholds"]] == [True, False]


@pytest.mark.slow
@pytest.mark.timeout(600)
@needs_cachedit
def test_every_other_cache_beside_cp_gives_the_single_process_output(tmp_path):
    """TaylorSeer and PAB decide by step and timestep, MagCache from its ratios, SeaCache from the unsplit
    latents, cache-dit reduces its own statistics over the processes: beside cp:2 each skips what one process
    skips (now beneath the split, each sees the shard its blocks compute) and gives its output."""
    from flowblending_accel.accelerators import calibrate_mag_ratios

    large, small = tiny_wan_pair()
    ratios = calibrate_mag_ratios(tiny_wan_pipeline(large), small, call_kwargs())
    request = {"thresholds": [], "others": list(OTHERS), "ratios": ratios}
    ranks = torchrun_two_ranks(tmp_path, request)
    for name in OTHERS:
        single = pipeline_run(other_cache(name, ratios), [])
        for rank in ranks:
            ran = rank["others"][name]
            assert ran["tails"] == single["tails"] and ran["counters"] == single["counters"], name
            assert torch.allclose(ran["output"], single["output"], atol=TOLERANCE, rtol=0), name
        blocks = {"large": len(large.blocks), "small": len(small.blocks)}
        skipped = [call for call in single["tails"] if not call[1] or call[2] < blocks[call[0]]]
        assert skipped, f"{name} skipped nothing here: the comparison would say nothing"


def test_caches_stack_with_cp_and_cache_dit_is_refused_beside_data_parallel_groups(monkeypatch):
    cp2, fbc, cachedit = (parse_accelerator(spec) for spec in ("cp:2", "fbc", "cache-dit"))
    validate_configs([cp2, fbc])
    validate_configs([cp2, cachedit])  # one process: nothing to group
    monkeypatch.setenv("WORLD_SIZE", "4")  # what torchrun --nproc_per_node 4 sets
    validate_configs([cp2, fbc])  # FBC reduces over the split's own ranks
    validate_configs([parse_accelerator("cp"), cachedit])  # cp over all 4: one group
    with pytest.raises(ValueError, match=r"cp cannot be stacked with cache-dit on 4 processes: .*use cp:4"):
        validate_configs([cp2, cachedit])


def test_our_fbc_hooks_decide_alone_unsplit_and_removal_takes_the_shared_decision_off():
    """Unsplit, the shared decision is the class's own (the outputs are equal); only the hooks the stack
    made carry it, and removal takes it off."""
    from diffusers import FirstBlockCacheConfig

    from flowblending_accel.core import patches
    from flowblending_accel.core.diffusers_internals import FIRST_BLOCK_CACHE_DECISION

    def ours(hooks) -> list[bool]:
        return [FIRST_BLOCK_CACHE_DECISION in vars(hook) for hook in hooks]

    theirs = tiny_wan_pair(seed=2)[0]
    theirs.enable_cache(FirstBlockCacheConfig(threshold=THRESHOLD))  # a user's own FBC: not ours to touch
    outputs = []
    for shared in (True, False):
        large, small = tiny_wan_pair()
        pipe = tiny_wan_pipeline(large)
        with flowblending(
            pipe, small, FlowBlendingConfig(SCHEDULE, accelerators=[FirstBlockCache(THRESHOLD)])
        ):
            heads = first_block_cache_heads(large) + first_block_cache_heads(small)
            assert ours(heads) == [True, True] and ours(first_block_cache_heads(theirs)) == [False]
            if not shared:
                for model in (large, small):
                    patches.decide_alone(model)
            with torch.inference_mode():
                outputs.append(pipe(**wan_call_kwargs(steps=STEPS)).frames)
        assert ours(heads) == [False, False]
    assert torch.equal(*outputs)
