"""One scorer for every backend: texts -> tokens (length-sorted batches) -> encoder -> cosine head ->
temperature -> signals -> calibrated probabilities over the unit groups (label order = `codes`).

Only the encoder differs between backends (`shared.model.encoders`); the rest is numpy here, so torch fp32,
torch int8 and ONNX Runtime give the same probabilities up to the encoder's float error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shared.model.batching import token_batches
from shared.model.directory import EncoderSpec, ModelDir
from shared.model.encoders import Encoder, load_encoder_backend
from shared.model.signals import Signals


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


class UnitScorer:
    """A model directory's scorer on one encoder backend. Thread-safe for concurrent calls."""

    def __init__(
        self,
        model_dir: ModelDir,
        tokenizer: Any,
        spec: EncoderSpec,
        encoder: Encoder,
        signals: Signals,
        batch_size: int = 32,
    ):
        self.model_dir = model_dir
        self.tokenizer = tokenizer
        self.spec = spec
        self.encoder = encoder
        self.signals = signals
        self.batch_size = batch_size
        self.codes = list(model_dir.codes)
        self.version = model_dir.version
        self.max_length = model_dir.max_length
        self.temperature = model_dir.temperature
        head, self.scale = model_dir.head
        self.head_t = np.ascontiguousarray(head.T)  # (hidden, n_codes)

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        *,
        backend: str = "auto",
        device: str = "auto",
        quantize: str = "int8",
        threads: int | None = None,
        int8_fp32_layers: int = 2,
        batch_size: int = 32,
    ) -> UnitScorer:
        """backend: auto (torch on CUDA, else ONNX Runtime) | torch | onnx; quantize: none | int8 (CPU)."""
        directory = ModelDir.read(model_dir)
        tokenizer = directory.tokenizer()
        spec = directory.encoder_spec(tokenizer)
        encoder = load_encoder_backend(
            directory,
            tokenizer,
            spec,
            backend=backend,
            device=device,
            quantize=quantize,
            threads=threads,
            int8_fp32_layers=int8_fp32_layers,
        )
        return cls(directory, tokenizer, spec, encoder, directory.signals(), batch_size)

    @property
    def backend(self) -> str:
        return self.encoder.name

    def describe(self) -> dict[str, Any]:
        """Model version, backend and the signals in use (for logs and benchmarks)."""
        return {
            "version": self.version,
            "backend": self.backend,
            "architecture": self.spec.architecture,
            "signals": self.signals.describe(),
        }

    def embed(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """Normalised mean-pooled embeddings (len(texts), hidden); each independent of its batch-mates."""
        if self.encoder.per_record:
            batch_size = 1
        out = np.zeros((len(texts), self.spec.hidden_size), dtype=np.float32)
        for idx, batch in token_batches(
            self.tokenizer,
            texts,
            self.max_length,
            batch_size or self.batch_size,
            self.spec.pad_token_id,
            self.spec.token_type_ids,
        ):
            out[idx] = self.encoder.embed(batch)
        return out

    def head_logits(self, embeddings: np.ndarray) -> np.ndarray:
        """Uncalibrated cosine-head logits."""
        return self.scale * (embeddings @ self.head_t)

    def probabilities_from_embeddings(self, texts: list[str], embeddings: np.ndarray) -> np.ndarray:
        head = softmax(self.head_logits(embeddings) / self.temperature)
        return self.signals.mix(texts, embeddings, head)

    def unit_probabilities(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """Calibrated probabilities (len(texts), len(codes)): temperature-scaled head softmax mixed with the
        signals the model uses."""
        texts = list(texts)
        return self.probabilities_from_embeddings(texts, self.embed(texts, batch_size))

    def nearest_examples(self, texts: list[str], k: int = 5) -> list[list[tuple[str, str, float]]]:
        """Per text: the k most similar training texts of the kNN index (text, unit code, cosine similarity
        from the int8 index, within ~0.01), most similar first; empty lists when the model stores no texts."""
        if self.signals.knn is None or self.signals.knn.texts is None:
            return [[] for _ in texts]
        return self.signals.nearest(self.embed(list(texts)), self.codes, k)
