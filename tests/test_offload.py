"""Memory mode 'offload': the inactive model leaves the device and comes back before its segment."""

import torch

from flowblending_accel.accelerators import (
    FlowBlendingConfig,
    OffloadInactive,
    applied_stack,
    apply_flowblending_,
    remove_flowblending_,
)
from flowblending_accel.tiny_models import tiny_wan_pair, tiny_wan_pipeline, wan_call_kwargs


def _record_moves(model, name, log, router_ref):
    original = model.to

    def to(*args, **kwargs):
        router = router_ref[0]
        log.append(
            (
                name,
                str(args[0] if args else kwargs.get("device")),
                router.session.last_step if router and router.session else None,
            )
        )
        return original(*args, **kwargs)

    model.to = to


def test_offload_moves_at_the_right_steps_and_keeps_outputs():
    large, small = tiny_wan_pair()
    pipe = tiny_wan_pipeline(large)
    reference = pipe(**wan_call_kwargs(steps=10)).frames
    offload = OffloadInactive(prefetch_steps=1)
    log, router_ref = [], [None]
    _record_moves(large, "large", log, router_ref)
    _record_moves(small, "small", log, router_ref)
    router = apply_flowblending_(pipe, small, FlowBlendingConfig("L100", accelerators=[offload]))
    stack = applied_stack(pipe)
    router_ref[0] = router
    assert torch.equal(pipe(**wan_call_kwargs(steps=10)).frames, reference)  # all-large: bit-identical
    router.set_schedule("L40-S40-L20")
    log.clear()
    pipe(**wan_call_kwargs(steps=10))
    # Run start (no step yet): large stays, small leaves; during step 3 small is prefetched, and at the switch
    # to step 4 (the session is at step 4) the large leaves; the same at 7 -> 8; at run end the large (a
    # pipeline component) is home.
    assert [(name, step) for name, _, step in log] == [
        ("large", -1),
        ("small", -1),
        ("small", 3),
        ("large", 4),
        ("large", 7),
        ("small", 8),
        ("large", None),
    ]
    assert [device for _, device, _ in log] == ["cpu"] * 7  # no accelerator here: every "move" is to the CPU
    assert stack.counters()["offload"]["switches"] == 2
    remove_flowblending_(pipe)
