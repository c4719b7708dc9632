"""A kNN index that fits the CPU cache: the stored entries projected on their first principal components.

    python -m bench.experiments.knn_dims MODEL_DIR [--dims 192 128]

The multilingual model's kNN index (134,650 int8 entries x 384 dimensions, 52 MB) does not fit the L3 cache,
so each one-record search reads it from memory; a random half of it (26 MB) was searched 3x faster, not 2x
(RESULTS-issue28.md), but lost accuracy with the entries it dropped. Here every entry stays and each keeps
fewer dimensions: the entries' principal axes (fitted on the entries themselves), entries and queries
projected and renormalised, then the same int8 search. For each size: the one-record search time (median over
the dev split's labels), how many of the top-10 neighbours are those of the full index, and top-1 of the
model with that index on the multilingual dev split (mean of 25 languages) and the English dev sets, every
other part of the model unchanged. Prints a table; nothing is written.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from bench.devsets import load_devsets
from bench.multilingual import PER_LANGUAGE, dev_records
from services.trainer.evaluate import evaluate_set
from shared.corpus_multilingual import ESCO_LANGUAGES
from shared.model.knn import KnnIndex
from shared.predictor import Predictor, PredictorConfig
from shared.schemas import JobRecord


class ProjectedKnn(KnnIndex):
    """The index with its entries and every query projected on `axes` (hidden x dims) and renormalised."""

    def __init__(self, full: KnnIndex, axes: np.ndarray):
        projected = full.embeddings @ axes
        projected /= np.linalg.norm(projected, axis=1, keepdims=True).clip(1e-12)
        super().__init__(projected, full.labels, full.texts)
        self.axes = axes

    def search(self, query: np.ndarray, k: int, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
        projected = np.asarray(query, dtype=np.float32) @ self.axes
        projected /= np.linalg.norm(projected, axis=1, keepdims=True).clip(1e-12)
        return super().search(projected, k, block)


def principal_axes(embeddings: np.ndarray, dims: int) -> np.ndarray:
    """The first `dims` principal axes of the entries (uncentred: cosine similarity is about the origin)."""
    _, _, vt = np.linalg.svd(embeddings[:: max(1, len(embeddings) // 40_000)], full_matrices=False)
    return np.ascontiguousarray(vt[:dims].T.astype(np.float32))


def scores(predictor: Predictor) -> dict[str, float]:
    records = dev_records(ESCO_LANGUAGES, PER_LANGUAGE)
    right: dict[str, list[bool]] = {}
    for start in range(0, len(records), 256):
        chunk = records[start : start + 256]
        for r, p in zip(chunk, predictor.predict([JobRecord(job_title=r.label) for r in chunk]), strict=True):
            right.setdefault(r.language, []).append(p.unit_code in r.accept)
    out = {"multilingual": float(np.mean([np.mean(v) for v in right.values()]))}
    for name, dev in load_devsets().items():
        out[name] = evaluate_set(predictor, dev)["accuracy"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("--dims", type=int, nargs="+", default=[192, 128])
    args = parser.parse_args()
    predictor = Predictor.load(args.model_dir, PredictorConfig(cache_size=0))
    signals = predictor.scorer.signals
    full = signals.knn
    assert full is not None and signals.knn_config is not None
    k = signals.knn_config.k
    labels = [r.label for r in dev_records(ESCO_LANGUAGES, 40)]
    queries = predictor.scorer.embed(labels)
    reference = full.search(queries, k)[0]
    print(f"{'index':>22} {'MB':>5} {'search ms':>9} {'top-10 kept':>11} {'scores'}")
    for dims in [full.embeddings.shape[1], *args.dims]:
        index = (
            full
            if dims == full.embeddings.shape[1]
            else ProjectedKnn(full, principal_axes(full.embeddings, dims))
        )
        index.search(queries[:5], k)  # builds the int8 graph
        times = []
        for q in queries:
            started = time.perf_counter()
            index.search(q[None], k)
            times.append((time.perf_counter() - started) * 1000)
        ids = index.search(queries, k)[0]
        kept = np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, reference, strict=True)])
        signals.knn = index
        result = {name: round(v, 3) for name, v in scores(predictor).items()}
        print(
            f"{len(index):>10} x {dims:>3} dims {len(index) * dims / 1e6:>5.0f} "
            f"{statistics.median(times):>9.2f} {kept:>11.3f} {result}",
            flush=True,
        )
    signals.knn = full


if __name__ == "__main__":
    main()
