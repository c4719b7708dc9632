"""The signals stored with a model (`Signals`: kNN and lexical, and the reranker) and the one function that
mixes them with the head.

No torch here: every backend (torch fp32, torch int8, ONNX Runtime) hands its embeddings to the same numpy
code, so they differ only by the encoder's float error.

- kNN (`shared.model.knn`): the k training texts whose normalised embeddings are most similar to the query's
  vote for their unit group, weighted by softmax(similarity / tau).
- lexical (`shared.model.lexical`): the same vote over character n-gram TF-IDF vectors (spelling variants,
  rare words the encoder blurs).

Mixing (`mix_probabilities`): (1 - sum w_i) * p_head + sum w_i * p_i. A mixture of calibrated distributions
stays calibrated. The weights are chosen once, by `search_weights` (training), and stored in model.json.
Which signals pay for their CPU time on the dev sets: `python -m bench.signals` (figures in its docstring).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.model.knn import KNN_FILE, KnnConfig, KnnIndex, best_similarity, vote
from shared.model.lexical import LexicalConfig, LexicalIndex
from shared.model.rerank import Reranker

WEIGHT_GRID = tuple(round(0.05 * i, 2) for i in range(19))  # 0, 0.05, ..., 0.9
Neighbours = tuple[np.ndarray, np.ndarray]  # (entry ids, similarities) of each query's nearest index entries


def extend_indexes(
    knn: KnnIndex | None,
    lexical: LexicalIndex | None,
    texts: list[str],
    embeddings: np.ndarray,
    labels: np.ndarray,
) -> tuple[KnnIndex | None, LexicalIndex | None, int]:
    """Both indexes (those present) with the labelled records `texts` added, and how many were added: texts
    the kNN index already holds are skipped (a corrections run keeps its parent's entries, which may hold
    the same validation and test records)."""
    known = set(knn.texts) if knn is not None and knn.texts is not None else set()
    new = np.array([t not in known for t in texts], dtype=bool)
    texts = [t for t, n in zip(texts, new, strict=True) if n]
    if not texts:
        return knn, lexical, 0
    embeddings, labels = embeddings[new], np.asarray(labels)[new]
    if knn is not None:
        knn = knn.extended(embeddings, labels, texts)
    if lexical is not None:
        lexical = lexical.extended(np.arange(len(lexical.labels)), lexical.labels, texts, labels)
    return knn, lexical, len(texts)


def mix_probabilities(head_probs: np.ndarray, parts: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """(1 - sum w) * head + sum w_i * p_i: the one way signals are combined."""
    total = sum(w for _, w in parts)
    if total >= 1.0:
        raise ValueError(f"signal weights sum to {total}, must be < 1")
    out = (1.0 - total) * head_probs
    for probs, weight in parts:
        if weight > 0:
            out = out + weight * probs
    return out.astype(np.float32, copy=False)


@dataclass(frozen=True)
class NearestMatch:
    """Each record's nearest training text in the kNN index: its unit group (label id; -1 where the model
    has no kNN signal) and its cosine similarity. Routing auto-codes an answer that a coded text this near
    agrees with (`shared.routing.RoutingModel.match_similarity`), as statistical offices auto-code answers
    that match an already coded one."""

    labels: np.ndarray  # (n,) int64
    similarity: np.ndarray  # (n,) float32

    @classmethod
    def none(cls, n: int) -> NearestMatch:
        return cls(np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.float32))

    @classmethod
    def from_best_similarity(cls, best: np.ndarray) -> NearestMatch:
        """From each label's best similarity among a record's neighbours (`best_similarity`)."""
        labels = best.argmax(axis=1).astype(np.int64)
        similarity = best[np.arange(len(best)), labels].astype(np.float32)
        return cls(np.where(similarity > 0, labels, -1), similarity)

    @classmethod
    def stack(cls, rows: Sequence[tuple[int, float]]) -> NearestMatch:
        """From (label, similarity) pairs, one per record."""
        return cls(
            np.array([r[0] for r in rows], dtype=np.int64).reshape(-1),
            np.array([r[1] for r in rows], dtype=np.float32).reshape(-1),
        )

    def row(self, i: int) -> tuple[int, float]:
        return int(self.labels[i]), float(self.similarity[i])

    def take(self, rows: Sequence[int] | np.ndarray) -> NearestMatch:
        rows = np.asarray(rows, dtype=np.int64)
        return NearestMatch(self.labels[rows], self.similarity[rows])


class Signals:
    """The kNN and lexical signals of one model, their weights (absent or weight 0: not computed) and the
    optional second stage that reranks the mixed probabilities (`shared.model.rerank`)."""

    def __init__(
        self,
        codes: Sequence[str],
        knn: KnnIndex | None = None,
        knn_config: KnnConfig | None = None,
        lexical: LexicalIndex | None = None,
        lexical_config: LexicalConfig | None = None,
        reranker: Reranker | None = None,
    ):
        self.codes = list(codes)
        self.num_labels = len(self.codes)
        self.knn, self.knn_config = knn, knn_config
        self.lexical, self.lexical_config = lexical, lexical_config
        self.reranker = reranker

    @classmethod
    def load(cls, model_dir: Path, meta: dict[str, Any], codes: Sequence[str]) -> Signals:
        """The signals model.json names and the model directory holds."""
        model_dir = Path(model_dir)
        knn = knn_config = lexical = lexical_config = None
        if (model_dir / KNN_FILE).exists():
            knn = KnnIndex.load(model_dir)
            knn_config = KnnConfig(**meta["knn"]) if meta.get("knn") else None
        if (model_dir / "lexical.json").exists() and meta.get("lexical"):
            lexical_config = LexicalConfig(**meta["lexical"])
            # models stored with every n-gram are pruned here (a no-op for indexes built pruned)
            lexical = LexicalIndex.load(model_dir, lexical_config).pruned(lexical_config)
        return cls(codes, knn, knn_config, lexical, lexical_config, Reranker.load(model_dir))

    @property
    def uses_knn(self) -> bool:
        return self.knn is not None and self.knn_config is not None and self.knn_config.weight > 0

    @property
    def uses_lexical(self) -> bool:
        return self.lexical is not None and self.lexical_config is not None and self.lexical_config.weight > 0

    def describe(self) -> dict[str, Any]:
        """The signals in use with their weights and index sizes, and the reranker (logs, benchmarks)."""
        out: dict[str, Any] = {}
        if self.uses_knn:
            assert self.knn is not None and self.knn_config is not None
            out["knn"] = {"weight": self.knn_config.weight, "k": self.knn_config.k, "entries": len(self.knn)}
        if self.uses_lexical:
            assert self.lexical is not None and self.lexical_config is not None
            out["lexical"] = {
                "weight": self.lexical_config.weight,
                "k": self.lexical_config.k,
                "entries": len(self.lexical),
            }
        if self.reranker is not None:
            out["rerank"] = {"k": self.reranker.k}
        return out

    def lexical_neighbours(self, texts: list[str]) -> Neighbours | None:
        """The lexical signal's nearest entries of each text (None when the signal is not in use). It reads
        the texts alone, so the scorer runs it beside the encoder (`UnitScorer.unit_scores`)."""
        if not self.uses_lexical or not len(texts):
            return None
        assert self.lexical is not None and self.lexical_config is not None
        return self.lexical.nearest(texts, self.lexical_config.k)

    def probabilities(
        self, texts: list[str], embeddings: np.ndarray, lexical: Neighbours | None = None
    ) -> dict[str, np.ndarray]:
        """Each signal in use ("knn", "lexical"): its probabilities over the unit groups, and each unit
        group's best similarity among the signal's neighbours ("knn_similarity", "lexical_similarity").
        `lexical`: the texts' `lexical_neighbours`, when already searched."""
        out: dict[str, np.ndarray] = {}
        if self.uses_knn and len(texts):
            assert self.knn is not None and self.knn_config is not None
            ids, sims = self.knn.search(np.asarray(embeddings, dtype=np.float32), self.knn_config.k)
            labels = self.knn.labels[ids]
            out["knn"] = vote(labels, sims, self.knn_config.tau, self.num_labels)
            out["knn_similarity"] = best_similarity(labels, sims, self.num_labels)
        if self.uses_lexical and len(texts):
            assert self.lexical is not None and self.lexical_config is not None
            ids, sims = lexical if lexical is not None else self.lexical.nearest(texts, self.lexical_config.k)
            labels = self.lexical.labels[ids]
            out["lexical"] = vote(labels, sims, self.lexical_config.tau, self.num_labels)
            out["lexical_similarity"] = best_similarity(labels, sims, self.num_labels)
        return out

    def weights(self) -> dict[str, float]:
        """The mixing weight of each signal in use."""
        out: dict[str, float] = {}
        if self.uses_knn:
            assert self.knn_config is not None
            out["knn"] = self.knn_config.weight
        if self.uses_lexical:
            assert self.lexical_config is not None
            out["lexical"] = self.lexical_config.weight
        return out

    def first_stage(
        self,
        texts: list[str],
        embeddings: np.ndarray,
        head_probs: np.ndarray,
        lexical: Neighbours | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The head's calibrated probabilities mixed with the signals in use, and each signal's own
        probabilities ("head" and those in use): what the reranker reads."""
        parts = self.probabilities(texts, embeddings, lexical)
        weights = self.weights()
        mixed = mix_probabilities(head_probs, [(parts[name], weights[name]) for name in weights])
        return mixed, {"head": head_probs, **parts}

    def mix(self, texts: list[str], embeddings: np.ndarray, head_probs: np.ndarray) -> np.ndarray:
        """The model's probabilities over the unit groups: the first stage, then the reranker when the model
        has one."""
        return self.score(texts, embeddings, head_probs)[0]

    def score(
        self,
        texts: list[str],
        embeddings: np.ndarray,
        head_probs: np.ndarray,
        lexical: Neighbours | None = None,
    ) -> tuple[np.ndarray, NearestMatch]:
        """`mix`, and each text's nearest kNN training text (from the same search); `lexical`: the texts'
        `lexical_neighbours`, when already searched."""
        mixed, parts = self.first_stage(texts, embeddings, head_probs, lexical)
        best = parts.get("knn_similarity")
        nearest = NearestMatch.none(len(texts)) if best is None else NearestMatch.from_best_similarity(best)
        if self.reranker is not None and len(texts):
            mixed = self.reranker.rerank(self.codes, mixed, parts)
        return mixed, nearest

    def nearest(self, embeddings: np.ndarray, codes: list[str], k: int) -> list[list[tuple[str, str, float]]]:
        """(training text, its unit code, cosine similarity) of each query's k nearest kNN entries."""
        if self.knn is None or self.knn.texts is None or not len(self.knn) or k <= 0:
            return [[] for _ in range(len(embeddings))]
        ids, sims = self.knn.search(embeddings, k)
        texts, labels = self.knn.texts, self.knn.labels
        return [
            [(texts[j], codes[labels[j]], round(float(s), 6)) for j, s in zip(row, row_sims, strict=True)]
            for row, row_sims in zip(ids, sims, strict=True)
        ]


@dataclass(frozen=True)
class WeightChoice:
    """The signal weights (and vote temperatures) `search_weights` chose, and their validation scores."""

    weights: dict[str, float]
    taus: dict[str, float]
    val_accuracy: float
    val_nll: float


def search_weights(
    head_probs: np.ndarray,
    candidates: dict[str, dict[float, np.ndarray]],
    labels: np.ndarray,
    fixed: dict[str, float | None],
    grid: tuple[float, ...] = WEIGHT_GRID,
) -> WeightChoice:
    """Joint search over each signal's weight (unless fixed) and vote temperature (its candidates' keys):
    the highest validation accuracy, ties to the lower log loss. The weights sum to less than 0.95."""
    names = list(candidates)
    options = [
        [
            (w, tau)
            for w in ([fixed[name]] if fixed.get(name) is not None else grid)
            for tau in candidates[name]
        ]
        for name in names
    ]
    rows = np.arange(len(labels))
    best: tuple[float, float, dict[str, float], dict[str, float]] | None = None
    for combo in itertools.product(*options):
        weights = [float(w) for w, _ in combo]  # type: ignore[arg-type]
        if sum(weights) >= 0.95:
            continue
        parts = [(candidates[n][tau], w) for n, (_, tau), w in zip(names, combo, weights, strict=True)]
        p = mix_probabilities(head_probs, parts)
        acc = round(float((p.argmax(1) == labels).mean()), 4) if len(labels) else 0.0
        nll = float(-np.log(np.clip(p[rows, labels], 1e-12, None)).mean()) if len(labels) else 0.0
        if best is None or (acc, -nll) > (best[0], -best[1]):
            best = (
                acc,
                nll,
                dict(zip(names, weights, strict=True)),
                {n: t for n, (_, t) in zip(names, combo, strict=True)},
            )
    assert best is not None
    return WeightChoice(weights=best[2], taus=best[3], val_accuracy=best[0], val_nll=best[1])
