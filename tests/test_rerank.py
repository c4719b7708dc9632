"""The second stage (shared.model.rerank): a learned fusion of the candidates' signals and group masses."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.model.knn import best_similarity
from shared.model.rerank import FEATURES, Reranker, candidate_features, fit_reranker

# two minor groups of three unit groups each, and one more major group
CODES = ["2211", "2212", "2213", "2221", "2222", "7411"]


def _distribution(rng: np.random.Generator, n: int, peak: np.ndarray, strength: float) -> np.ndarray:
    logits = rng.normal(size=(n, len(CODES)))
    logits[np.arange(n), peak] += strength
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def _records(seed: int, n: int = 600) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """The mixed probabilities favour a wrong code half the time; the kNN signal knows the right one."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CODES), size=n)
    decoy = (labels + 1 + rng.integers(0, len(CODES) - 1, size=n)) % len(CODES)
    misled = rng.random(n) < 0.5
    head = _distribution(rng, n, np.where(misled, decoy, labels), 2.5)
    knn = _distribution(rng, n, labels, 4.0)
    mixed = 0.9 * head + 0.1 * knn
    return mixed, {"head": head, "knn": knn}, labels


def test_identity_reranker_returns_the_mixed_probabilities() -> None:
    mixed, signals, _ = _records(0, 50)
    out = Reranker.identity(k=3).rerank(CODES, mixed, signals)
    np.testing.assert_allclose(out, mixed, atol=1e-5)


def test_candidate_features_are_ranked_with_group_masses() -> None:
    mixed = np.array([[0.05, 0.4, 0.3, 0.1, 0.1, 0.05]])
    # the kNN neighbours: two of 2213 (0.9, 0.7) and one of 2212 (0.6)
    near = best_similarity(np.array([[2, 2, 1]]), np.array([[0.9, 0.7, 0.6]]), len(CODES))
    top, feats, outside = candidate_features(CODES, mixed, {"head": mixed, "knn_similarity": near}, k=3)
    assert top.tolist() == [[1, 2, 3]]
    np.testing.assert_allclose(outside, [[0.2]], atol=1e-6)
    minor = FEATURES.index("minor")
    # 2212 and 2213 share minor group 221 (0.75); 2221 is in 222 (0.2)
    np.testing.assert_allclose(np.exp(feats[0, :, minor]), [0.75, 0.75, 0.2], atol=1e-4)
    np.testing.assert_allclose(feats[0, :, FEATURES.index("knn_similarity")], [0.6, 0.9, 0.0], atol=1e-6)
    assert np.all(feats[0, :, FEATURES.index("lexical")] == 0)  # a signal not in use: a zero feature


def test_fitted_reranker_learns_the_better_signal_and_stays_a_distribution(tmp_path: Path) -> None:
    mixed, signals, labels = _records(1)
    reranker = fit_reranker(CODES, mixed, signals, labels, k=4)
    assert reranker.weights[FEATURES.index("knn")] > 0.5
    assert reranker.val_accuracy_after > reranker.val_accuracy_before + 0.1
    # on records it was not fitted on
    mixed, signals, labels = _records(2)
    out = reranker.rerank(CODES, mixed, signals)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    assert (out.argmax(1) == labels).mean() > (mixed.argmax(1) == labels).mean() + 0.1
    # and it is calibrated there: mean top-1 confidence near top-1 accuracy
    assert abs(out.max(1).mean() - (out.argmax(1) == labels).mean()) < 0.05
    reranker.save(tmp_path)
    assert Reranker.load(tmp_path) == reranker
    assert Reranker.load(tmp_path / "absent") is None
