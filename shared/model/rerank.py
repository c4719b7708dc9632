"""Second stage: rerank each record's top-k unit groups with a learned fusion of the signals and the
hierarchy.

The first stage mixes the head, kNN and lexical probabilities with fixed weights (`mix_probabilities`). The
reranker rescores the k most probable unit groups from features of each candidate: every signal's own
probability, the mixed one, the candidate's best similarity among each signal's neighbours, and the mass the
mixed distribution puts on the candidate's minor, sub-major and major group (a unit group whose neighbours in
the hierarchy also score is more likely). A linear conditional-logit model over the k candidates plus one
"other" option (the mass outside the top k) is fitted by maximum likelihood on validation records (held-out
occupations and new titles of known ones): it reorders the candidates and calibrates their probabilities for
titles the model has not seen. Pure numpy at inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import ClassVar

import numpy as np
from pydantic import Field
from scipy.special import softmax

from shared.model.artifact import JsonArtifact

RERANK_FILE = "rerank.json"
# per candidate: log probabilities of the mix and of each signal, its best similarity among each signal's
# neighbours (how near the nearest training text is: the votes alone are normalised), log mass of its
# groups, log rank
FEATURES = (
    "mixed", "head", "knn", "lexical", "knn_similarity", "lexical_similarity", "minor", "sub_major", "major",
    "rank",
)  # fmt: skip
_EPS = 1e-6


class Reranker(JsonArtifact):
    """A fitted reranker (stored as rerank.json). Probabilities in, probabilities out (label order)."""

    file_name: ClassVar[str] = RERANK_FILE
    k: int = Field(20, ge=2)
    weights: list[float]  # one per FEATURES
    other_bias: float = 0.0
    other_weight: float = 1.0  # on the log mass outside the top k
    fitted_on: str = ""
    val_accuracy_before: float | None = None
    val_accuracy_after: float | None = None

    @classmethod
    def identity(cls, k: int) -> Reranker:
        """The reranker that returns the mixed probabilities unchanged (the fit's starting point)."""
        return cls(k=k, weights=[1.0] + [0.0] * (len(FEATURES) - 1))

    def rerank(self, codes: list[str], mixed: np.ndarray, signals: dict[str, np.ndarray]) -> np.ndarray:
        """Probabilities (n, len(codes)): the top k reranked, the rest scaled to the "other" option's mass."""
        top, feats, outside = candidate_features(codes, mixed, signals, self.k)
        scores = np.concatenate(
            [feats @ np.asarray(self.weights), self.other_bias + self.other_weight * np.log(outside + _EPS)],
            axis=1,
        )
        p = softmax(scores, axis=1)
        out = mixed * (p[:, -1:] / np.maximum(outside, _EPS))
        np.put_along_axis(out, top, p[:, :-1], axis=1)
        return out.astype(np.float32, copy=False)


@lru_cache(maxsize=16)
def _groups(codes: tuple[str, ...], digits: int) -> tuple[np.ndarray, np.ndarray]:
    """Each unit group's column among the groups of `digits` digits (a code's prefix), and the 0/1
    membership matrix (len(codes), groups)."""
    _, columns = np.unique([c[:digits] for c in codes], return_inverse=True)
    members = np.zeros((len(codes), columns.max() + 1), dtype=np.float32)
    members[np.arange(len(codes)), columns] = 1.0
    return columns, members


def candidate_features(
    codes: list[str], mixed: np.ndarray, signals: dict[str, np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top-k label ids (n, k) best first, their features (n, k, len(FEATURES)), mass outside them (n, 1)).

    `signals` holds the calibrated head probabilities ("head") and those of each signal in use with their
    best similarities (`Signals.probabilities`); a signal not in use contributes a zero feature."""
    n = len(mixed)
    k = min(k, mixed.shape[1])
    top = np.argpartition(-mixed, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(mixed, top, axis=1), axis=1, kind="stable")
    rows = np.arange(n)[:, None]
    top = top[rows, order]
    feats = np.zeros((n, k, len(FEATURES)), dtype=np.float64)
    top_mixed = mixed[rows, top]
    feats[..., 0] = np.log(top_mixed + _EPS)
    for name in ("head", "knn", "lexical", "knn_similarity", "lexical_similarity"):
        if name in signals:
            value = signals[name][rows, top]
            feats[..., FEATURES.index(name)] = value if name.endswith("similarity") else np.log(value + _EPS)
    for j, digits in enumerate((3, 2, 1), start=FEATURES.index("minor")):
        columns, members = _groups(tuple(codes), digits)
        mass = mixed @ members  # (n, groups): the mixed probability of each group
        feats[..., j] = np.log(mass[rows, columns[top]] + _EPS)
    feats[..., FEATURES.index("rank")] = np.log1p(np.arange(k))[None, :]
    outside = np.clip(1.0 - top_mixed.sum(axis=1, keepdims=True), 0.0, 1.0)
    return top, feats, outside


def fit_reranker(
    codes: list[str],
    mixed: np.ndarray,
    signals: dict[str, np.ndarray],
    labels: np.ndarray,
    *,
    k: int = 20,
    l2: float = 1e-3,
    features: Sequence[str] = FEATURES,
    fitted_on: str = "",
) -> Reranker:
    """Maximum likelihood (L-BFGS, L2 on the change from the identity) of the candidates' weights on labelled
    records; a record whose label is outside the top k is labelled "other". Features not in `features` keep
    weight 0 (the mixed probability always counts)."""
    from scipy.optimize import minimize  # training only

    labels = np.asarray(labels)
    top, feats, outside = candidate_features(codes, mixed, signals, k)
    k = top.shape[1]
    hit = top == labels[:, None]
    target = np.where(hit.any(axis=1), hit.argmax(axis=1), k)  # k: "other"
    log_outside = np.log(outside[:, 0] + _EPS)
    start = Reranker.identity(k)
    theta0 = np.array(start.weights + [start.other_bias, start.other_weight])
    n_feat, rows = len(FEATURES), np.arange(len(labels))
    used = np.r_[[name == "mixed" or name in features for name in FEATURES], True, True]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b, a = theta[:n_feat], theta[n_feat], theta[n_feat + 1]
        scores = np.concatenate([feats @ w, (b + a * log_outside)[:, None]], axis=1)
        p = softmax(scores, axis=1)
        nll = -np.log(p[rows, target] + 1e-12).mean()
        d = p.copy()
        d[rows, target] -= 1.0  # d scores
        grad_w = np.einsum("nk,nkf->f", d[:, :k], feats) / len(rows)
        grad = np.r_[grad_w, d[:, k].mean(), (d[:, k] * log_outside).mean()]
        delta = theta - theta0
        return float(nll + l2 * delta @ delta), (grad + 2 * l2 * delta) * used

    result = minimize(loss, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 500})
    theta = np.where(used, result.x, theta0)
    reranker = Reranker(
        k=k,
        weights=[round(float(x), 6) for x in theta[:n_feat]],
        other_bias=round(float(theta[n_feat]), 6),
        other_weight=round(float(theta[n_feat + 1]), 6),
        fitted_on=fitted_on,
    )
    reranked = reranker.rerank(codes, mixed, signals)
    reranker.val_accuracy_before = round(float((mixed.argmax(1) == labels).mean()), 4)
    reranker.val_accuracy_after = round(float((reranked.argmax(1) == labels).mean()), 4)
    return reranker
