"""Tiny randomly initialised encoders and model directories for tests (2 layers, 32 hidden), built in seconds.

- BERT with the default base model's WordPiece vocabulary (`tiny_bert_base`), or
- RoBERTa with a byte-level BPE vocabulary trained here on ISCO titles (`tiny_roberta_base`: pad id 1,
  position ids derived from it, no token_type_ids).
`build_tiny_model_dir` writes a model directory with optional kNN (with texts) and lexical signals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    RobertaConfig,
    RobertaModel,
    RobertaTokenizerFast,
)

from shared.model.classifier import IscoClassifier, encode_texts, save_model_dir
from shared.model.knn import KnnConfig, KnnIndex
from shared.model.lexical import LexicalConfig, LexicalIndex
from shared.model.resources import default_base_model
from shared.taxonomy import get_taxonomy

SIGNAL_TEXTS = {
    "2221": ["nurse", "staff nurse", "registered nurse : cares for patients"],
    "5120": ["cook", "line cook", "restaurant cook : prepares meals"],
    "2512": ["software developer", "programmer", "web developer : writes code"],
    "8332": ["hgv class 1 driver", "lorry driver", "truck driver : drives heavy goods vehicles"],
}


def _dims() -> dict[str, int]:
    return {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    }


def tiny_bert_base(directory: Path, seed: int = 0) -> Path:
    """A tiny BERT encoder directory with a WordPiece tokenizer (the default base model's)."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(default_base_model())
    config = BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=128, **_dims())
    BertModel(config, add_pooling_layer=False).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def tiny_roberta_base(directory: Path, seed: int = 0) -> Path:
    """A tiny RoBERTa encoder directory with a byte-level BPE tokenizer trained on ISCO titles."""
    from tokenizers import ByteLevelBPETokenizer

    torch.manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    titles = [get_taxonomy().title(c).lower() for c in get_taxonomy().unit_groups]
    titles += [t for texts in SIGNAL_TEXTS.values() for t in texts]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        titles, vocab_size=800, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    )
    bpe.save_model(str(directory))
    tokenizer = RobertaTokenizerFast.from_pretrained(str(directory))  # reads vocab.json + merges.txt
    assert tokenizer.pad_token_id == 1 and tokenizer("cook")["input_ids"][0] == tokenizer.bos_token_id
    config = RobertaConfig(
        vocab_size=tokenizer.vocab_size,
        max_position_embeddings=160,  # RoBERTa: positions start after the pad id
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        type_vocab_size=1,
        **_dims(),
    )
    RobertaModel(config, add_pooling_layer=False).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_tiny_model_dir(
    model_dir: Path,
    version: str = "tiny-1",
    seed: int = 0,
    *,
    architecture: str = "bert",
    signals: bool = False,
) -> Path:
    """A model directory with a random tiny encoder; `signals`: kNN (with texts) and lexical indexes too."""
    from shared.model.classifier import load_encoder

    base = Path(str(model_dir) + "-base")
    (tiny_roberta_base if architecture == "roberta" else tiny_bert_base)(base, seed)
    encoder, tokenizer = load_encoder(base)
    codes = get_taxonomy().unit_groups
    torch.manual_seed(seed)
    model = IscoClassifier(encoder, len(codes))
    meta: dict[str, object] = {"version": version, "base_model": f"tiny-{architecture}", "max_length": 64}
    knn_index = lexical_index = None
    if signals:
        texts = [t for texts in SIGNAL_TEXTS.values() for t in texts]
        labels = np.array([codes.index(c) for c, texts in SIGNAL_TEXTS.items() for _ in texts])
        knn_index = KnnIndex(encode_texts(model, tokenizer, texts, max_length=64), labels, texts)
        lexical_config = LexicalConfig(k=3, tau=0.1, weight=0.2, min_df=1)
        lexical_index = LexicalIndex.build(texts, labels, lexical_config)
        meta["knn"] = KnnConfig(k=3, tau=0.1, weight=0.3).model_dump()
        meta["lexical"] = lexical_config.model_dump()
    save_model_dir(
        model, tokenizer, codes, model_dir, meta=meta, knn_index=knn_index, lexical_index=lexical_index
    )
    return model_dir
