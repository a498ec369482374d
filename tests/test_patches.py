"""Every patch of another library's objects or globals (flowblending_accel/core/patches.py) is undone exactly:
after removal the patched object is the one it was (the same class, function, registry entry, setting), and a
process-wide patch changes nothing for a pipeline the project did not touch while it is applied."""

import logging
import subprocess
import sys
from types import SimpleNamespace

import torch

from flowblending_accel.accelerators import FlowBlendingConfig, apply_flowblending_, remove_flowblending_
from flowblending_accel.core import patches
from flowblending_accel.core.diffusers_internals import attention_backend_functions
from flowblending_accel.tiny_models import (
    ltx_call_kwargs,
    tiny_ltx_pair,
    tiny_ltx_pipeline,
    tiny_unet_pair,
    tiny_wan_pair,
    tiny_wan_pipeline,
    wan_call_kwargs,
)


def _frames(pipe, kwargs) -> torch.Tensor:
    with torch.inference_mode():
        return pipe(**{**kwargs, "generator": torch.Generator().manual_seed(0)}).frames


def test_importing_the_package_patches_nothing():
    script = (
        "import logging, flowblending_accel, flowblending_accel.accelerators, flowblending_accel.core.api\n"
        "from flowblending_accel.core.diffusers_internals import attention_backend_functions\n"
        "names = ['torchao', 'diffusers.models.modeling_utils', 'torch.utils._pytree']\n"
        "print(sum(len(logging.getLogger(n).filters) for n in names),"
        " any(hasattr(f, '__wrapped__') for f in attention_backend_functions().values()))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["0", "False"], done.stderr


def test_an_owned_call_swaps_one_pipelines_class_and_removal_puts_the_same_class_back():
    large, small = tiny_wan_pair()
    pipe, untouched = tiny_wan_pipeline(large), tiny_wan_pipeline(tiny_wan_pair(seed=3)[0])
    own_class, before = type(pipe), _frames(untouched, wan_call_kwargs(steps=4))
    apply_flowblending_(pipe, small, FlowBlendingConfig("L40-S40-L20", accelerators=["dpm++:3"]))
    assert type(pipe) is not own_class and type(pipe).__name__ == own_class.__name__
    assert type(untouched) is own_class and torch.equal(_frames(untouched, wan_call_kwargs(steps=4)), before)
    remove_flowblending_(pipe)
    assert type(pipe) is own_class and not patches.pipeline_call_owned(pipe)


def test_the_mask_head_patch_is_held_scoped_and_leaves_the_registry_as_it_was():
    backends = attention_backend_functions()
    original = dict(backends)
    pipe = tiny_ltx_pipeline(tiny_ltx_pair()[0])  # masked attention, no parallel config: untouched
    kwargs = ltx_call_kwargs(steps=3)
    kwargs["prompt_attention_mask"] = kwargs["prompt_attention_mask"].clone()
    kwargs["prompt_attention_mask"][:, -2:] = 0
    before = _frames(pipe, kwargs)
    first, second = (SimpleNamespace(context_parallel_config=SimpleNamespace(ulysses_degree=2)) for _ in "ab")
    patches.share_mask_heads(first)
    patches.share_mask_heads(second)
    patches.share_mask_heads(first)  # idempotent per config
    try:
        assert all(backends[name] is not function for name, function in original.items())
        assert torch.equal(_frames(pipe, kwargs), before)
        patches.unshare_mask_heads(first)  # the other still holds it
        assert all(backends[name] is not function for name, function in original.items())
    finally:
        patches.unshare_mask_heads(first)
        patches.unshare_mask_heads(second)
    assert backends.keys() == original.keys()
    assert all(backends[name] is function for name, function in original.items())


def test_the_mask_head_patch_cuts_only_a_held_configs_masks():
    backends = attention_backend_functions()
    seen = []
    backends["spy"] = lambda **kwargs: seen.append(tuple(kwargs["attn_mask"].shape))
    held = SimpleNamespace(context_parallel_config=SimpleNamespace(ulysses_degree=2))
    other = SimpleNamespace(context_parallel_config=SimpleNamespace(ulysses_degree=2))
    mask = torch.ones(1, 4, 6, 6, dtype=torch.bool)
    try:
        patches.share_mask_heads(held)
        backends["spy"](attn_mask=mask, _parallel_config=held)
        backends["spy"](attn_mask=mask, _parallel_config=other)
        backends["spy"](attn_mask=mask, _parallel_config=None)
        patches.unshare_mask_heads(held)
        backends["spy"](attn_mask=mask, _parallel_config=held)
    finally:
        patches.unshare_mask_heads(held)
        del backends["spy"]
    assert seen == [(1, 1, 6, 6), (1, 4, 6, 6), (1, 4, 6, 6), (1, 4, 6, 6)]


def test_the_recompile_limit_is_held_and_put_back():
    config = torch._dynamo.config
    before = config.recompile_limit
    first, second = object(), object()
    patches.raise_recompile_limit(first, before + 10)
    patches.raise_recompile_limit(second, before + 20)
    assert config.recompile_limit == before + 20
    patches.restore_recompile_limit(second)
    assert config.recompile_limit == before + 10
    patches.restore_recompile_limit(first)
    patches.restore_recompile_limit(first)  # a second release changes nothing
    assert config.recompile_limit == before


def test_a_forward_shim_leaves_the_model_as_it_was():
    large, _ = tiny_unet_pair()
    own = vars(large).get("forward")

    def keywords_first(forward):
        return lambda *args, **kwargs: forward(*args, **kwargs)

    patches.shim_forward(large, keywords_first)
    assert "forward" in vars(large)
    patches.unshim_forward(large)
    assert vars(large).get("forward") is own


def test_the_silencer_drops_only_its_notes_and_leaves_the_loggers_as_they_were(caplog):
    noisy, quiet = logging.getLogger("flowblending_test.noisy"), logging.getLogger("flowblending_test.quiet")
    filters, level = list(noisy.filters), quiet.level
    with caplog.at_level(logging.INFO):
        with patches.silenced({noisy.name: ("ignore me",), quiet.name: ()}):
            noisy.warning("please ignore me")
            noisy.warning("a real warning")
            noisy.error("an error, ignore me or not")
            quiet.warning("anything")
            quiet.getChild("child").warning("its children too")
            quiet.error("but not an error")
        noisy.warning("ignore me, after the block")
    assert [r.getMessage() for r in caplog.records] == [
        "a real warning",
        "an error, ignore me or not",
        "but not an error",
        "ignore me, after the block",
    ]
    assert noisy.filters == filters and quiet.level == level
