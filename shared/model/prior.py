"""Prior correction: take back part of the training corpus's class prior from the model's probabilities.

Every signal learns how often each unit group occurs in the training records. In ESCO that share says how
finely ESCO splits a unit group into occupations and how many alternative labels its editors wrote, not how
often people hold the job: the 50 largest unit groups hold 46% of ESCO's titles, but 19% of the ILO index
titles and 29% of the O*NET titles of the dev sets. Users' mixes are unknown, so the model is judged as if
every unit group were equally likely: the probabilities are divided by the training prior raised to a
strength fitted on validation records for the class-balanced accuracy (post-hoc logit adjustment, Menon et
al., ICLR 2021; strength 1 is the balanced-error optimum for a model that learnt the prior exactly).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from pydantic import Field

from shared.model.artifact import JsonArtifact

PRIOR_FILE = "prior.json"
STRENGTHS = tuple(round(0.1 * i, 1) for i in range(11))


class PriorCorrection(JsonArtifact):
    """The training prior (records per unit group) and the strength it is divided out with (prior.json)."""

    file_name: ClassVar[str] = PRIOR_FILE
    strength: float = Field(ge=0, le=1)
    counts: dict[str, int]  # training records per unit group; a group without records counts 1
    fitted_on: str = ""
    val_balanced_before: float | None = None
    val_balanced_after: float | None = None

    @classmethod
    def from_labels(
        cls,
        codes: Sequence[str],
        labels: Sequence[int],
        strength: float = 0.0,
        base_counts: dict[str, int] | None = None,
    ) -> PriorCorrection:
        """The prior of training records `labels` (ids into `codes`), added to `base_counts` (a corrections
        run: the parent's training prior, which the model still carries)."""
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(codes))
        base = base_counts or {}
        merged = {c: int(n) + base.get(c, 0) for c, n in zip(codes, counts, strict=True)}
        return cls(strength=strength, counts=merged)

    def log_prior(self, codes: Sequence[str]) -> np.ndarray:
        counts = np.array([max(self.counts.get(c, 1), 1) for c in codes], dtype=np.float64)
        return np.log(counts / counts.sum())

    def apply(self, codes: Sequence[str], probs: np.ndarray, strength: float | None = None) -> np.ndarray:
        """probs (n, len(codes)) divided by prior ** strength, renormalised."""
        strength = self.strength if strength is None else strength
        if strength == 0 or not len(probs):
            return probs
        out = probs * np.exp(-strength * (self.log_prior(codes) - self.log_prior(codes).max()))[None, :]
        return (out / out.sum(axis=1, keepdims=True)).astype(np.float32, copy=False)


def balanced_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the unit groups present in `labels` of the share of their records ranked first."""
    labels = np.asarray(labels)
    hit = probs.argmax(axis=1) == labels
    groups, inverse = np.unique(labels, return_inverse=True)
    return float((np.bincount(inverse, hit) / np.bincount(inverse)).mean()) if len(groups) else float("nan")


def fit_prior(
    codes: Sequence[str],
    train_labels: Sequence[int],
    val_probs: np.ndarray,
    val_labels: np.ndarray,
    strengths: Sequence[float] = STRENGTHS,
    fitted_on: str = "",
    base_counts: dict[str, int] | None = None,
) -> PriorCorrection:
    """The strength with the highest class-balanced validation accuracy (ties: the weaker correction)."""
    prior = PriorCorrection.from_labels(codes, train_labels, base_counts=base_counts)
    scores = [balanced_accuracy(prior.apply(codes, val_probs, s), val_labels) for s in strengths]
    best = int(np.argmax(scores))  # first maximum: strengths are in increasing order
    return prior.model_copy(
        update={
            "strength": float(strengths[best]),
            "fitted_on": fitted_on,
            "val_balanced_before": round(balanced_accuracy(val_probs, val_labels), 4),
            "val_balanced_after": round(scores[best], 4),
        }
    )
