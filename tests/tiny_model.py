"""A tiny randomly initialised model directory for tests (2 layers, 32 hidden), built in seconds."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from shared.modeling import IscoClassifier, default_base_model, save_model_dir
from shared.taxonomy import get_taxonomy


def build_tiny_model_dir(model_dir: Path, version: str = "tiny-1", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(default_base_model())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    codes = get_taxonomy().unit_groups
    model = IscoClassifier(BertModel(config, add_pooling_layer=False), len(codes))
    save_model_dir(
        model,
        tokenizer,
        codes,
        model_dir,
        meta={"version": version, "base_model": "tiny-bert", "max_length": 64},
    )
    return model_dir
