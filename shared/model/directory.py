"""The model directory: the one reader of what `shared.model.classifier.save_model_dir` writes. No torch.

encoder/                 Hugging Face encoder (config, weights) and its tokenizer
head.safetensors         cosine head (n_codes x hidden) and its scale
labels.json              codes in label order, plus label2id / id2label maps
model.json               version, base model, max_length, pooling, head, architecture, tokenizer kind,
                         signal configs ("knn", "lexical"), the duties view's weight ("duties_view"), the
                         languages it was trained on ("languages", ISO 639-1; absent: ["en"])
calibration.json         temperature fitted on the validation split
knn.safetensors          optional: normalised embeddings of training texts and their labels (kNN signal)
knn_texts.json           optional: those training texts (evidence for reviewers)
lexical.json/.npz/.npy   optional: character n-gram TF-IDF vocabulary + idf, vectors and labels
rerank.json              optional: the second stage's weights (shared.model.rerank)
routing.json             optional: routers and thresholds for auto-coding (shared.routing)
onnx/                    the encoder's ONNX graphs, fp32 and int8, written by training (model.onnx_export)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from shared.language import DEFAULT_MODEL_LANGUAGES
from shared.model.signals import Signals

# model.json "duties_view" "view": what its weight was fitted to (`shared.model.scorer` module docstring)
DUTIES_VIEW = "duties_tokens"


class EncoderSpec(BaseModel):
    """What the backends need to know about an encoder and its tokenizer (model.json "encoder")."""

    architecture: str  # config.model_type: bert, roberta, xlm-roberta, ...
    tokenizer: str  # tokenizer class, e.g. BertTokenizerFast, RobertaTokenizerFast
    tokenizer_kind: str  # wordpiece | bpe | unigram | other
    pad_token_id: int
    token_type_ids: bool  # fed to the encoder (only where the architecture has more than one type)
    hidden_size: int

    @classmethod
    def of(cls, config: Any, tokenizer: Any) -> EncoderSpec:
        """From a Hugging Face encoder config and its tokenizer."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        model_kind = type(backend.model).__name__.lower() if backend is not None else "other"
        kind = next((k for k in ("wordpiece", "bpe", "unigram") if k in model_kind), "other")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.pad_token_id
        return cls(
            architecture=str(config.model_type),
            tokenizer=type(tokenizer).__name__,
            tokenizer_kind=kind,
            pad_token_id=int(pad or 0),
            token_type_ids="token_type_ids" in tokenizer.model_input_names
            and int(getattr(config, "type_vocab_size", 0) or 0) > 1,
            hidden_size=int(config.hidden_size),
        )


def model_languages(meta: dict[str, Any]) -> tuple[str, ...]:
    """model.json's "languages"; every model trained before the list existed reads English only."""
    languages = meta.get("languages")
    if not languages:
        return DEFAULT_MODEL_LANGUAGES
    return tuple(str(code) for code in languages)


def read_model_languages(path: str | Path) -> tuple[str, ...]:
    """The languages of the model directory at `path` (its model.json only)."""
    return model_languages(json.loads((Path(path) / "model.json").read_text()))


@dataclass(frozen=True)
class ModelDir:
    """What a model directory says, read once (encoder weights are left to the backend that needs them)."""

    path: Path
    codes: list[str]
    meta: dict[str, Any]
    temperature: float

    @classmethod
    def read(cls, path: str | Path) -> ModelDir:
        path = Path(path)
        codes = json.loads((path / "labels.json").read_text())["codes"]
        meta = json.loads((path / "model.json").read_text())
        calibration = path / "calibration.json"
        temperature = 1.0
        if calibration.exists():
            temperature = float(json.loads(calibration.read_text()).get("temperature", 1.0))
        return cls(path, codes, meta, temperature)

    @property
    def encoder_dir(self) -> Path:
        return self.path / "encoder"

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "unknown"))

    @property
    def max_length(self) -> int:
        return int(self.meta.get("max_length", 128))

    @property
    def languages(self) -> tuple[str, ...]:
        """The languages the model codes (model.json "languages", written by the trainer from what it trained
        on); a record in another language or script goes to a coder (`shared.screening.read_language`)."""
        return model_languages(self.meta)

    @property
    def duties_weight(self) -> float:
        """Weight of a record's duties view beside the whole record (`shared.model.scorer.fuse_views`); 0
        for models trained before the view was pooled from the record's own pass (their weight was fitted to
        a second pass over the duties alone, which nothing computes any more)."""
        view = self.meta.get("duties_view") or {}
        return float(view.get("weight", 0.0)) if view.get("view") == DUTIES_VIEW else 0.0

    @cached_property
    def head(self) -> tuple[np.ndarray, float]:
        """(row-normalised head weights (n_codes, hidden), scale)."""
        from safetensors.numpy import load_file

        tensors = load_file(str(self.path / "head.safetensors"))
        head = tensors["head"].astype(np.float32)
        head /= np.clip(np.linalg.norm(head, axis=1, keepdims=True), 1e-12, None)
        return head, float(tensors["scale"].reshape(-1)[0])

    def signals(self) -> Signals:
        return Signals.load(self.path, self.meta, self.codes)

    def encoder_spec(self, tokenizer: Any) -> EncoderSpec:
        """What model.json records about the encoder (older directories: derived from its config)."""
        stored = self.meta.get("encoder")
        if isinstance(stored, dict):
            return EncoderSpec(**stored)
        from transformers import AutoConfig

        return EncoderSpec.of(AutoConfig.from_pretrained(self.encoder_dir), tokenizer)

    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.encoder_dir)
