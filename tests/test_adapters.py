"""Adapters loaded on the large model after wrapping: refused before any denoising with the two ways out,
or followed when the small model has a matching adapter of its own."""

import pytest
import torch

from flowblending_accel import apply_flowblending_
from flowblending_accel.tiny_models import (
    sd_call_kwargs,
    tiny_sd_pipeline,
    tiny_unet_pair,
    tiny_wan_pair,
    tiny_wan_pipeline,
    wan_call_kwargs,
)

peft = pytest.importorskip("peft", reason="LoRA adapters need peft (pip install flowblending-accel[dev])")


def _lora(model, name="style"):
    model.add_adapter(
        peft.LoraConfig(r=2, target_modules=["to_q"], init_lora_weights=False), adapter_name=name
    )


def _calls(module):
    calls = []
    module.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def test_lora_loaded_after_wrapping_is_refused_before_any_denoising():
    large, small = tiny_wan_pair()
    pipe = tiny_wan_pipeline(large)
    apply_flowblending_(pipe, small, "L40-S40-L20")
    _lora(pipe.transformer)
    calls = _calls(small)
    with pytest.raises(ValueError, match=r"pipe.transformer|the large model") as refusal:
        pipe(**wan_call_kwargs(steps=10))
    message = str(refusal.value)
    assert (
        "LoRA adapter(s) ['style']" in message
        and "small.load_lora_adapter(path, adapter_name='style')" in message
    )
    assert "remove_flowblending_(pipe)" in message and calls == []


def test_lora_loaded_before_wrapping_is_refused_at_apply():
    large, small = tiny_wan_pair()
    pipe = tiny_wan_pipeline(large)
    _lora(pipe.transformer)
    with pytest.raises(ValueError, match=r"pipe.transformer has LoRA adapter\(s\) \['style'\]"):
        apply_flowblending_(pipe, small, "L40-S40-L20")


def test_a_matching_small_adapter_is_used():
    large, small = tiny_wan_pair()
    pipe = tiny_wan_pipeline(large)
    router = apply_flowblending_(pipe, small, "L40-S40-L20")
    _lora(pipe.transformer)
    _lora(small)  # the user's LoRA for the small model, under the same name
    pipe(**wan_call_kwargs(steps=10))
    assert router.last_run.steps_per_model == {"large": 6, "small": 4}


def test_disabled_adapters_are_not_in_the_way():
    large, small = tiny_wan_pair()
    pipe = tiny_wan_pipeline(large)
    router = apply_flowblending_(pipe, small, "L40-S40-L20")
    _lora(pipe.transformer)
    pipe.transformer.disable_adapters()
    pipe(**wan_call_kwargs(steps=10))
    assert router.last_run.finished


def test_ip_adapter_on_the_large_unet_is_refused():
    from diffusers.models.embeddings import ImageProjection

    large, small = tiny_unet_pair()
    pipe = tiny_sd_pipeline(large)
    apply_flowblending_(pipe, small, "L40-S40-L20")
    # What load_ip_adapter leaves on the UNet: an image projection feeding the cross-attention.
    pipe.unet.encoder_hid_proj = ImageProjection(
        image_embed_dim=8, cross_attention_dim=32, num_image_text_embeds=2
    )
    with pytest.raises(
        ValueError, match=r"IP-Adapter \(ImageProjection in encoder_hid_proj\).*remove_flowblending_"
    ):
        pipe(**sd_call_kwargs(steps=10))
    assert torch.is_tensor(pipe.unet.encoder_hid_proj.image_embeds.weight)
