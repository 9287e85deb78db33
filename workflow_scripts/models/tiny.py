"""Tiny random models with a word-level tokenizer, for tests and quick debugging runs.

The tokenizer is trained with ``tokenizers`` on the given texts, so every word of the facts is one
token; the models (GPT-2 style and llama style) have 2 blocks of width 64.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch

SPECIAL = ["<pad>", "<unk>", "<eos>"]


def train_word_tokenizer(texts: Iterable[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(list(texts), trainers.WordLevelTrainer(special_tokens=SPECIAL))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>"
    )


def build_tiny_model(family: str, vocab_size: int, seed: int = 0, n_positions: int = 128):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if family == "gpt2":
        cfg = GPT2Config(
            vocab_size=vocab_size, n_layer=2, n_embd=64, n_head=2, n_positions=n_positions,
            bos_token_id=2, eos_token_id=2, pad_token_id=0,
        )
        return GPT2LMHeadModel(cfg)
    if family == "llama":
        cfg = LlamaConfig(
            vocab_size=vocab_size, num_hidden_layers=2, hidden_size=64, intermediate_size=128,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=n_positions,
            bos_token_id=2, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True,
        )
        return LlamaForCausalLM(cfg)
    raise ValueError(f"unknown tiny model family {family!r}; use 'gpt2' or 'llama'")


def save_tiny_model(family: str, texts: Iterable[str], out_dir: str | os.PathLike, seed: int = 0) -> Path:
    tokenizer = train_word_tokenizer(texts)
    model = build_tiny_model(family, len(tokenizer), seed=seed)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
