"""One scorer for every backend: texts -> tokens (length-sorted batches) -> encoder -> cosine head ->
temperature -> signals -> calibrated probabilities over the unit groups (label order = `codes`).

A record with duties is also scored on its duties on their own, and the two views are combined
(`fuse_views`) with the weight fitted on validation in training (model.json "duties_view"): the whole text
leans on the title, and a title that says little ("assistant", "beef tagger") then leans on what the duties
say. The duties view is the record's own duties tokens, pooled apart in the same encoder pass
(`IscoClassifier.embed_views`). Encoding the duties a second time, alone, read ~2 points more O*NET records
right but cost ~0.9x the record's tokens again, and the fast path fell under its speed target
(bench/experiments/duties_view_cost.py).

Only the encoder differs between backends (`shared.model.encoders`); the rest is numpy here, so torch fp32,
torch int8 and ONNX Runtime give the same probabilities up to the encoder's float error.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import softmax

from shared.model.batching import token_batches
from shared.model.directory import EncoderSpec, ModelDir
from shared.model.encoders import Encoder, load_encoder_backend
from shared.model.int8 import INT8_FP32_LAYERS
from shared.model.signals import NearestMatch, Neighbours, Signals
from shared.text import duties_part


def fuse_views(whole: np.ndarray, duties: np.ndarray, weight: float) -> np.ndarray:
    """Weighted geometric mean of the probabilities of the whole records and of their duties view,
    renormalised: weight 0 keeps the whole records' probabilities, and the weights sum to one, so the
    fusion does not sharpen what the temperature calibrated."""
    if weight <= 0:
        return whole
    log = (1 - weight) * np.log(np.clip(whole, 1e-12, None)) + weight * np.log(np.clip(duties, 1e-12, None))
    return softmax(log, axis=1).astype(whole.dtype, copy=False)


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
        self.duties_weight = model_dir.duties_weight
        head, self.scale = model_dir.head
        self.head_t = np.ascontiguousarray(head.T)  # (hidden, n_codes)
        self._pool: tuple[int, ThreadPoolExecutor] | None = None

    def _beside(self) -> ThreadPoolExecutor:
        """The thread that searches the lexical index beside the encoder; made in the process that uses it
        (a Celery pool child forked from a loaded parent does not inherit the parent's threads)."""
        if self._pool is None or self._pool[0] != os.getpid():
            self._pool = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="lexical"))
        return self._pool[1]

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        *,
        backend: str = "auto",
        device: str = "auto",
        quantize: str = "int8",
        threads: int | None = None,
        int8_fp32_layers: int = INT8_FP32_LAYERS,
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
        return self.embed_views(texts, batch_size)[0]

    def embed_views(self, texts: list[str], batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`embed`, and each record's duties view from the same pass (zero vectors for titles alone)."""
        if self.encoder.per_record:
            batch_size = 1
        whole = np.zeros((len(texts), self.spec.hidden_size), dtype=np.float32)
        duties = np.zeros_like(whole)
        for idx, batch in token_batches(
            self.tokenizer,
            texts,
            self.max_length,
            batch_size or self.batch_size,
            self.spec.pad_token_id,
            self.spec.token_type_ids,
        ):
            whole[idx], duties[idx] = self.encoder.embed(batch)
        return whole, duties

    def head_logits(self, embeddings: np.ndarray) -> np.ndarray:
        """Uncalibrated cosine-head logits."""
        return self.scale * (embeddings @ self.head_t)

    def scores_from_embeddings(
        self, texts: list[str], embeddings: np.ndarray, lexical: Neighbours | None = None
    ) -> tuple[np.ndarray, NearestMatch]:
        head = softmax(self.head_logits(embeddings) / self.temperature, axis=1)
        return self.signals.score(texts, embeddings, head, lexical)

    def probabilities_from_embeddings(self, texts: list[str], embeddings: np.ndarray) -> np.ndarray:
        return self.scores_from_embeddings(texts, embeddings)[0]

    def unit_probabilities(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """Calibrated probabilities (len(texts), len(codes)): temperature-scaled head softmax mixed with the
        signals the model uses; for records with duties, fused with those of their duties view."""
        return self.unit_scores(texts, batch_size)[0]

    def unit_scores(self, texts: list[str], batch_size: int | None = None) -> tuple[np.ndarray, NearestMatch]:
        """`unit_probabilities`, and each record's nearest kNN training text (what routing's match rule
        reads), from the same encoder pass and search."""
        texts = list(texts)
        # The lexical search reads the texts alone: it runs on a second thread while the encoder runs (ONNX
        # Runtime releases the GIL). One record leaves the second core mostly idle (its encoder pass took
        # 14.0 ms on two threads, 14.6 on one), so the search, ~2 ms for a record with duties over the
        # multilingual index, comes almost free (bench/experiments/RESULTS-issue28.md).
        lexical = (
            self._beside().submit(self.signals.lexical_neighbours, texts)
            if self.signals.uses_lexical
            else None
        )
        embeddings, duties_embeddings = self.embed_views(texts, batch_size)
        probs, nearest = self.scores_from_embeddings(
            texts, embeddings, lexical.result() if lexical is not None else None
        )
        if self.duties_weight <= 0:
            return probs, nearest
        # duties cut off whole by truncation (a title of max_length tokens) have no view: a zero vector
        rows = [i for i, t in enumerate(texts) if duties_part(t) and duties_embeddings[i].any()]
        if rows:
            view = self.probabilities_from_embeddings(
                [duties_part(texts[i]) for i in rows], duties_embeddings[rows]
            )
            probs[rows] = fuse_views(probs[rows], view, self.duties_weight)
        return probs, nearest

    def nearest_examples(self, texts: list[str], k: int = 5) -> list[list[tuple[str, str, float]]]:
        """Per text: the k most similar training texts of the kNN index (text, unit code, cosine similarity
        from the int8 index, within ~0.01), most similar first; empty lists when the model stores no texts."""
        if self.signals.knn is None or self.signals.knn.texts is None:
            return [[] for _ in texts]
        return self.signals.nearest(self.embed(list(texts)), self.codes, k)
