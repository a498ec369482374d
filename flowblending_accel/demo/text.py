"""The demo's text path: a word-level tokenizer and a tiny UMT5 encoder, so ``pipe("a 7 moving left")`` works
offline. The vocabulary is the demo's whole language; unknown words map to ``<unk>``.
"""

from __future__ import annotations

from .data import DIRECTIONS

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")
VOCABULARY = SPECIAL_TOKENS + ("a", "an", "moving") + tuple(str(d) for d in range(10)) + DIRECTIONS
MAX_SEQUENCE_LENGTH = 8  # pass as `max_sequence_length` to the pipeline: the models were trained with it
TEXT_DIM = 64


def build_tokenizer():
    from ..tiny_models.text import word_tokenizer

    return word_tokenizer(VOCABULARY, MAX_SEQUENCE_LENGTH)


def build_text_encoder(seed: int = 0):
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    config = UMT5Config(
        vocab_size=len(VOCABULARY),
        d_model=TEXT_DIM,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return UMT5EncoderModel(config).eval()
