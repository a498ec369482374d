"""Tiny text stacks (a word-level tokenizer and a one-layer encoder) so tiny pipelines take prompt strings,
as the recipes' command lines do. Offline: the vocabulary is built here; unknown words map to ``<unk>``."""

from __future__ import annotations

import torch

from .tiny import TEXT_DIM

SPECIAL = ("<pad>", "</s>", "<unk>", "<s>")
WORDS = (
    "a",
    "an",
    "the",
    "of",
    "on",
    "in",
    "and",
    "with",
    "cat",
    "dog",
    "bear",
    "polar",
    "playing",
    "guitar",
    "teddy",
    "washing",
    "dishes",
    "moon",
    "city",
    "night",
    "red",
    "blue",
)


def word_tokenizer(vocabulary: tuple[str, ...], max_length: int, bos: str | None = None):
    """A word-level fast tokenizer over ``vocabulary`` (which starts with ``<pad>``, ``</s>``, ``<unk>``);
    every sequence ends with ``</s>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: index for index, word in enumerate(vocabulary)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    special = {"bos_token": bos} if bos else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=max_length,
        **special,
    )


def tiny_tokenizer(max_length: int):
    return word_tokenizer(SPECIAL + WORDS, max_length, bos="<s>")


def tiny_text_encoder(kind: str, seed: int = 0):
    """A one-layer ``umt5`` (Wan), ``t5`` (LTX) or ``clip`` (Stable Diffusion) encoder of width TEXT_DIM."""
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        T5Config,
        T5EncoderModel,
        UMT5Config,
        UMT5EncoderModel,
    )

    torch.manual_seed(seed)
    vocab = len(SPECIAL + WORDS)
    t5 = dict(
        vocab_size=vocab,
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=37,
        num_layers=1,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
    )
    if kind == "umt5":
        return UMT5EncoderModel(UMT5Config(**t5)).eval()
    if kind == "t5":
        return T5EncoderModel(T5Config(**t5)).eval()
    if kind == "clip":
        config = CLIPTextConfig(
            vocab_size=vocab,
            hidden_size=TEXT_DIM,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=1,
            max_position_embeddings=16,
            pad_token_id=0,
            bos_token_id=3,
            eos_token_id=1,
        )
        return CLIPTextModel(config).eval()
    raise ValueError(f"text encoder kind {kind!r} must be 'umt5', 't5' or 'clip'.")


# Family -> its text stacks: (tokenizer attribute, encoder attribute, encoder kind, tokenizer max length).
TEXT_OF_FAMILY = {
    "wan": (("tokenizer", "text_encoder", "umt5", 512),),
    "ltx": (("tokenizer", "text_encoder", "t5", 128),),
    "sd": (("tokenizer", "text_encoder", "clip", 16),),
    "flux": (("tokenizer", "text_encoder", "clip", 16), ("tokenizer_2", "text_encoder_2", "t5", 512)),
}


def with_text(pipe, family: str, seed: int = 0):
    """``pipe`` with tiny tokenizers and text encoders of its family registered (returns ``pipe``)."""
    modules = {}
    for tokenizer, encoder, kind, max_length in TEXT_OF_FAMILY[family]:
        modules[tokenizer] = tiny_tokenizer(max_length)
        modules[encoder] = tiny_text_encoder(kind, seed)
    pipe.register_modules(**modules)
    if hasattr(pipe, "tokenizer_max_length"):  # read from the tokenizer when the pipeline was built (Flux)
        pipe.tokenizer_max_length = modules["tokenizer"].model_max_length
    return pipe
