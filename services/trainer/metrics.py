"""Evaluation metrics from a probability matrix over unit groups and gold codes.

Definitions (each checked on hand-computed examples in tests/test_evaluate.py):
- accuracy (4-digit): the most probable unit group is an accepted code (the gold code or an alternative).
- 3/2/1-digit accuracy: probabilities are summed up the hierarchy (as the predictor does for its fallback) and
  the most probable group at that level is the prefix of an accepted code.
- top-3 / top-5: an accepted code is among the k most probable unit groups.
- macro-F1: per unit group F1 of the top-1 prediction, averaged over the groups that occur in the gold codes
  or the predictions; a prediction that matches an alternative accepted code counts as that code being gold.
- error rate per major group: 1 - 4-digit accuracy among records whose gold code is in that major group.
- ECE: expected calibration error of the top-1 confidence, equal-width bins.
- coverage at precision p: the largest share of records that can be auto-coded at 4 digits with precision
  >= p by a threshold on the top-1 confidence; "with fallback": thresholds t4, t3 (as the predictor's unit and
  minor thresholds): a record is coded at 4 digits when its unit confidence >= t4, else at 3 digits when its
  best minor group's confidence >= t3, else left to a human; the best pair is reported with its thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

PRECISION_TARGETS = (0.90, 0.95, 0.99)
MAX_FALLBACK_THRESHOLDS = 512  # 4-digit thresholds scanned for the fallback policy (quantiles beyond this)


def _group_probabilities(
    probs: np.ndarray, codes: Sequence[str], digits: int
) -> tuple[list[str], np.ndarray]:
    """Sum unit-group probabilities into groups of `digits` digits (code prefixes)."""
    prefixes = [c[:digits] for c in codes]
    groups = sorted(set(prefixes))
    index = {g: i for i, g in enumerate(groups)}
    member = np.zeros((len(codes), len(groups)), dtype=np.float64)
    for row, prefix in enumerate(prefixes):
        member[row, index[prefix]] = 1.0
    return groups, probs @ member


def coverage_at_precision(conf: np.ndarray, correct: np.ndarray, target: float) -> dict[str, float | None]:
    """Largest share of records whose confidence clears one threshold with precision >= target."""
    n = len(conf)
    if n == 0:
        return {"coverage": 0.0, "threshold": None, "precision": None}
    order = np.argsort(-conf, kind="stable")
    sorted_conf = conf[order]
    hits = np.cumsum(correct[order])
    counts = np.arange(1, n + 1)
    # A threshold can only cut between distinct confidences: keep the last position of each tied run.
    last_of_run = np.append(sorted_conf[1:] != sorted_conf[:-1], True)
    precision = hits / counts
    ok = np.flatnonzero(last_of_run & (precision >= target - 1e-12))
    if len(ok) == 0:
        return {"coverage": 0.0, "threshold": None, "precision": None}
    k = ok[-1]
    return {
        "coverage": float((k + 1) / n),
        "threshold": float(sorted_conf[k]),
        "precision": float(precision[k]),
    }


def _coverage_with_fallback(
    conf4: np.ndarray, correct4: np.ndarray, conf3: np.ndarray, correct3: np.ndarray, target: float
) -> dict[str, float | None]:
    """Best coverage for a threshold pair: 4 digits if conf4 >= t4, else 3 digits if conf3 >= t3.

    For each candidate t4 the 3-digit answers are the remaining records in order of minor-group confidence,
    and the longest prefix that keeps precision >= target is taken. Coverage ties go to more 4-digit answers.
    """
    n = len(conf4)
    best: dict[str, float | None] = {
        "coverage": 0.0,
        "coverage_unit": 0.0,
        "coverage_minor": 0.0,
        "threshold_unit": None,
        "threshold_minor": None,
        "precision": None,
    }
    if n == 0:
        return best
    candidates = np.unique(conf4)
    if len(candidates) > MAX_FALLBACK_THRESHOLDS:
        candidates = np.unique(np.quantile(conf4, np.linspace(0, 1, MAX_FALLBACK_THRESHOLDS)))
    best_key = (-1, -1)
    for t4 in [np.inf, *candidates]:
        at4 = conf4 >= t4
        n4, h4 = int(at4.sum()), int(correct4[at4].sum())
        rest = np.flatnonzero(~at4)
        order = rest[np.argsort(-conf3[rest], kind="stable")]
        sorted3 = conf3[order]
        counts = n4 + np.arange(1, len(order) + 1)
        precision = (h4 + np.cumsum(correct3[order])) / counts
        last_of_run = np.append(sorted3[1:] != sorted3[:-1], True) if len(order) else np.zeros(0, dtype=bool)
        ok = np.flatnonzero(last_of_run & (precision >= target - 1e-12))
        if len(ok):
            k = int(ok[-1])
            answered, t3, prec = n4 + k + 1, float(sorted3[k]), float(precision[k])
        elif n4 and h4 / n4 >= target - 1e-12:
            answered, t3, prec = n4, None, h4 / n4
        else:
            continue
        key = (answered, n4)
        if key > best_key:
            best_key = key
            best = {
                "coverage": answered / n,
                "coverage_unit": n4 / n,
                "coverage_minor": (answered - n4) / n,
                "threshold_unit": None if np.isinf(t4) else float(t4),
                "threshold_minor": t3,
                "precision": prec,
            }
    return best


def expected_calibration_error(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """ECE over equal-width confidence bins (0, 1/n], ..., ((n-1)/n, 1]."""
    if len(conf) == 0:
        return 0.0
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def _macro_f1(pred: list[str], gold: list[str]) -> float:
    labels = sorted(set(pred) | set(gold))
    if not labels:
        return 0.0
    f1s = []
    for label in labels:
        tp = sum(1 for p, g in zip(pred, gold, strict=True) if p == label and g == label)
        fp = sum(1 for p, g in zip(pred, gold, strict=True) if p == label and g != label)
        fn = sum(1 for p, g in zip(pred, gold, strict=True) if p != label and g == label)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(f1s))


def compute_metrics(
    probs: np.ndarray,
    codes: Sequence[str],
    gold: Sequence[str],
    accept: Sequence[set[str]] | None = None,
    *,
    precision_targets: Sequence[float] = PRECISION_TARGETS,
    n_bins: int = 15,
    routed_confidence: np.ndarray | None = None,
    auto_coded: np.ndarray | None = None,
) -> dict[str, Any]:
    """All evaluation metrics for `probs` (n records x len(codes) unit groups) against gold unit codes.

    `accept[i]` holds alternative correct codes of record i (the gold code is always accepted).
    `routed_confidence`: the router's calibrated probability that the 4-digit answer is right;
    `auto_coded`: records the model would auto-code (no review reason). Both add a "routing" section.
    """
    probs = np.asarray(probs, dtype=np.float64)
    n = len(gold)
    if probs.shape != (n, len(codes)):
        raise ValueError(f"probabilities have shape {probs.shape}, expected ({n}, {len(codes)})")
    accepted = [{g} | set(accept[i] if accept else ()) for i, g in enumerate(gold)]
    codes = list(codes)
    metrics: dict[str, Any] = {"n": n}
    if n == 0:
        return metrics

    ranking = np.argsort(-probs, axis=1, kind="stable")
    top1 = [codes[j] for j in ranking[:, 0]]
    conf4 = probs[np.arange(n), ranking[:, 0]]
    correct4 = np.array([top1[i] in accepted[i] for i in range(n)])
    metrics["accuracy"] = float(correct4.mean())

    level_conf: dict[int, np.ndarray] = {}
    level_correct: dict[int, np.ndarray] = {}
    for digits in (3, 2, 1):
        groups, gprobs = _group_probabilities(probs, codes, digits)
        best = gprobs.argmax(1)
        level_conf[digits] = gprobs[np.arange(n), best]
        level_correct[digits] = np.array(
            [any(a.startswith(groups[best[i]]) for a in accepted[i]) for i in range(n)]
        )
        metrics[f"accuracy_{digits}digit"] = float(level_correct[digits].mean())

    for k in (3, 5):
        topk = ranking[:, :k]
        metrics[f"top{k}"] = float(np.mean([any(codes[j] in accepted[i] for j in topk[i]) for i in range(n)]))

    # A hit on an alternative accepted code counts as that code being the gold one.
    effective_gold = [top1[i] if correct4[i] else gold[i] for i in range(n)]
    metrics["macro_f1"] = _macro_f1(top1, effective_gold)

    per_major: dict[str, dict[str, float | int]] = {}
    majors = np.array([g[0] for g in gold])
    for major in sorted(set(majors)):
        mask = majors == major
        per_major[major] = {"n": int(mask.sum()), "error_rate": float(1.0 - correct4[mask].mean())}
    metrics["error_rate_per_major"] = per_major

    metrics["mean_confidence"] = float(conf4.mean())
    metrics["ece"] = expected_calibration_error(conf4, correct4, n_bins)
    metrics["coverage"] = {
        f"{p:.2f}": {
            "unit_only": coverage_at_precision(conf4, correct4, p),
            "with_fallback": _coverage_with_fallback(conf4, correct4, level_conf[3], level_correct[3], p),
        }
        for p in precision_targets
    }
    if routed_confidence is not None:
        routed = np.asarray(routed_confidence, dtype=np.float64)
        metrics["routing"] = {
            "ece": expected_calibration_error(routed, correct4, n_bins),
            "mean_confidence": float(routed.mean()),
            "coverage": {f"{p:.2f}": coverage_at_precision(routed, correct4, p) for p in precision_targets},
        }
        if auto_coded is not None:
            auto = np.asarray(auto_coded, dtype=bool)
            metrics["routing"]["auto_coded"] = float(auto.mean())
            metrics["routing"]["auto_coded_precision"] = float(correct4[auto].mean()) if auto.any() else None
    return metrics


def unit_answers(
    probs: np.ndarray, codes: Sequence[str], gold: Sequence[str], accept: Sequence[set[str]] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 confidence, whether the top-1 unit group is accepted) per record: the points of the curve."""
    probs = np.asarray(probs, dtype=np.float64)
    best = probs.argmax(axis=1)
    accepted = [{g} | set(accept[i] if accept else ()) for i, g in enumerate(gold)]
    correct = np.array([codes[j] in accepted[i] for i, j in enumerate(best)], dtype=bool)
    return probs[np.arange(len(best)), best], correct


def coverage_precision_curve(confidence: Sequence[float], correct: Sequence[int]) -> tuple[np.ndarray, ...]:
    """Coverage and precision of the records accepted, highest confidence first (one point per record)."""
    conf = np.asarray(confidence, dtype=np.float64)
    order = np.argsort(-conf, kind="stable")
    hits = np.cumsum(np.asarray(correct, dtype=np.float64)[order])
    counts = np.arange(1, len(order) + 1)
    return counts / max(len(order), 1), hits / counts
