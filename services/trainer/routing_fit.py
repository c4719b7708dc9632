"""The router fitted for auto-coding (the `routing` stage): on validation, a logistic regression per level for
the probability that the level's answer is right, the thresholds that reach the target precision (overall and
per record shape, held on the precision's lower bound), and the match rule's similarity. The fitted model is
shared/routing.py's `RoutingModel`, which serving loads from `routing.json`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from services.trainer.routing_data import RoutingData, correct_by_level
from services.trainer.signals_fit import val_scores
from services.trainer.state import TrainState
from shared.decision import Hierarchy, level_probabilities
from shared.model.scorer import fuse_views
from shared.model.signals import NearestMatch
from shared.routing import (
    DEFAULT_TARGET_PRECISION,
    ENGLISH,
    LEVELS,
    POOLED_LANGUAGES,
    SHAPES,
    LevelRouter,
    RecordInputs,
    RoutingModel,
    match_features,
    routing_features,
)
from shared.screening import UNSURE_LANGUAGE, read_languages, routing_languages

MIN_SHAPE_RECORDS = 200  # a shape sets its own threshold from this many fitting records on
# A language sets its own threshold from this many: validation holds ~250 labels per language in the
# multilingual full profile, and the threshold is held on the precision's lower bound, which is stricter the
# fewer records there are (a language with few fitting records auto-codes less, not on a noisy estimate).
MIN_LANGUAGE_RECORDS = 100


def fit_logistic(
    x: np.ndarray, y: np.ndarray, l2: float = 1e-2
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Standardise, then an L2-regularised logistic regression: (mean, std, w, b), w on standardised features.

    The penalty is `l2` per record on the weights (the intercept free), scikit-learn's C = 1 / (l2 * n),
    fitted to a tight tolerance so the weights do not depend on where the solver stopped."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std < 1e-9] = 1.0
    model = LogisticRegression(C=1.0 / (l2 * len(x)), tol=1e-10, max_iter=1000)
    model.fit((x - mean) / std, y)
    return mean, std, model.coef_[0].astype(np.float64), float(model.intercept_[0])


def precision_lower_bound(hits: np.ndarray, n: np.ndarray, z: float) -> np.ndarray:
    """Wilson score lower bound of a precision of `hits` right out of `n`, `z` standard errors below (0: the
    observed precision)."""
    hits = np.asarray(hits, dtype=np.float64)
    n = np.maximum(np.asarray(n, dtype=np.float64), 1.0)
    p = hits / n
    if z <= 0:
        return p
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def threshold_for_precision(
    confidence: np.ndarray,
    correct: np.ndarray,
    precision: float,
    z: float = 0.0,
    clusters: np.ndarray | None = None,
) -> float:
    """Lowest threshold t such that records with confidence >= t are right at least `precision` of the time
    (with `z` > 0: the precision's Wilson lower bound, `z` standard errors down, reaches it, so a threshold
    chosen on few records, whose precision is a noisy estimate, is held stricter).

    `clusters` (one id per record: its occupation): the bound counts the distinct occupations above t, not
    the records. An occupation's labels (its spellings, gendered forms, the same title in a qualifier) are
    right or wrong together, so 30 labels of 6 occupations are 6 observations, not 30.

    Returns a value above every confidence (nothing auto-accepted, possibly > 1) when none reaches it.
    Only thresholds with at least 20 records above them count: precision over a handful is noise.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    order = np.argsort(-confidence, kind="stable")
    hits = np.cumsum(correct[order])
    n = np.arange(1, len(order) + 1)
    if clusters is None:
        bound = precision_lower_bound(hits, n, z)
    else:
        sorted_clusters = np.asarray(clusters)[order]
        _, first = np.unique(sorted_clusters, return_index=True)
        seen = np.zeros(len(order), dtype=np.float64)
        seen[first] = 1.0
        distinct = np.cumsum(seen)  # occupations among the records above each candidate threshold
        bound = precision_lower_bound(hits / n * distinct, distinct, z)
    ok = (bound >= precision) & (n >= min(20, len(order)))
    # a threshold may only sit between distinct confidences
    last_of_tie = np.r_[confidence[order][1:] != confidence[order][:-1], True]
    ok &= last_of_tie
    if not ok.any():
        return float(confidence.max(initial=1.0) + 1e-6)  # above every confidence: may exceed 1
    return float(confidence[order][np.flatnonzero(ok).max()])


def _rows(clusters: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    return None if clusters is None else np.asarray(clusters)[rows]


MIN_KIND_RECORDS = 200  # a kind of record sets its own threshold from this many fitting records on


def kind_thresholds(
    confidence: np.ndarray,
    correct: np.ndarray,
    precision: float,
    kinds: Sequence[str] | None = None,
    min_records: int = MIN_KIND_RECORDS,
) -> dict[str, float]:
    """The threshold each kind of record alone (kinds with at least `min_records`) needs for `precision`.

    One threshold fitted on a mix holds its precision on the mix, not on each part: easy records (new titles
    of known ESCO occupations) carry harder ones (survey-style coding-index titles) over the target.
    Applying the strictest per-kind threshold was measured and auto-coded nothing (no threshold reaches 95%
    on held-out ONS titles: bench/experiments/RESULTS-issue27.md), so the kinds' thresholds are reported in
    routing.json and the training summary, to show which kinds fall short; what is applied is the threshold
    of each record shape, which a user's record shows (`shape_thresholds`)."""
    if kinds is None:
        return {}
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    labels = np.asarray(kinds)
    out: dict[str, float] = {}
    for kind in sorted(set(labels.tolist())):
        rows = labels == kind
        if rows.sum() >= min_records:
            out[kind] = threshold_for_precision(confidence[rows], correct[rows], precision)
    return out


def shape_thresholds(
    confidence: np.ndarray,
    correct: np.ndarray,
    precision: float,
    shapes: np.ndarray,
    z: float = 0.0,
    clusters: np.ndarray | None = None,
) -> dict[str, float]:
    """The threshold each record shape with at least `MIN_SHAPE_RECORDS` fitting records needs for
    `precision` on its own records (`threshold_for_precision`; above 1 when none reaches it)."""
    out: dict[str, float] = {}
    for shape in SHAPES:
        rows = shapes == shape
        if rows.sum() >= MIN_SHAPE_RECORDS:
            out[shape] = threshold_for_precision(
                confidence[rows], correct[rows], precision, z, _rows(clusters, rows)
            )
    return out


def language_thresholds(
    confidence: np.ndarray,
    correct: np.ndarray,
    precision: float,
    languages: np.ndarray,
    z: float = 0.0,
    clusters: np.ndarray | None = None,
) -> dict[str, float]:
    """The threshold each language other than English with at least `MIN_LANGUAGE_RECORDS` fitting records
    needs for `precision` on its own records, and the pooled threshold of all surely non-English records
    (`POOLED_LANGUAGES`) for the languages with fewer and for records whose language is only guessed
    (`UNSURE_LANGUAGE`). Unsure records get no threshold of their own and stay out of the pool: on
    validation most of them are short English titles, and a threshold fitted on them let foreign titles
    through at 0.83 precision on the dev split (bench/experiments/RESULTS-issue28.md). Empty for English-only
    fitting records."""
    other = (languages != ENGLISH) & (languages != UNSURE_LANGUAGE)
    if other.sum() < MIN_LANGUAGE_RECORDS:
        # too few to say anything: languages with none of their own share the threshold of all records
        return {}
    out = {
        POOLED_LANGUAGES: threshold_for_precision(
            confidence[other], correct[other], precision, z, _rows(clusters, other)
        )
    }
    for language in sorted(set(languages[other].tolist())):
        rows = languages == language
        if rows.sum() >= MIN_LANGUAGE_RECORDS:
            out[language] = threshold_for_precision(
                confidence[rows], correct[rows], precision, z, _rows(clusters, rows)
            )
    return out


def fit_routing(
    per_level: dict[int, np.ndarray],
    correct: dict[int, np.ndarray],
    inputs: RecordInputs,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    fitted_on: str = "",
    nearest: NearestMatch | None = None,
    kinds: Sequence[str] | None = None,
    z: float = 0.0,
    clusters: np.ndarray | None = None,
) -> RoutingModel:
    """Fit one router per level on held-out records, and the match rule's similarity when `nearest` is given.

    `per_level`: level -> (n, n_groups) probabilities; `correct`: level -> (n,) whether the top group of that
    level is right; `inputs`: what each record gave. Thresholds reach `target_precision` on these same
    records (a small model with 8 weights per level: the optimism of fitting both on one split is small next
    to the split's own noise), one for all records and one per record shape (`shape_thresholds`): one
    threshold over a mix holds its precision on the mix, not on each part, and a user's record shows its
    shape, so each shape is held to the target on its own (bench/experiments/RESULTS-issue27.md).
    The match rule's similarity is the lowest at which the answers the nearest training text agrees with
    reach `target_precision`, per shape likewise (bench/experiments/routing_similarity.py: the router's own
    features, the similarities included, rank answers no better on the dev sets; with the rule, the share of
    unseen ILO titles a threshold can auto-code at 95% precision goes from 8.9% to 27.1%).
    `kinds` (each record's training source): what each kind alone would need is reported (`kind_thresholds`).
    `z`: thresholds hold the target on the precision's lower bound `z` standard errors down
    (`threshold_for_precision`): a shape's threshold rests on a few hundred records at its top.
    `clusters` (each record's occupation): the bound counts occupations, not records.
    """
    shapes = inputs.shapes()
    languages = inputs.language_codes()
    levels: dict[int, LevelRouter] = {}
    for level in LEVELS:
        x = routing_features(per_level[level], inputs)
        y = np.asarray(correct[level], dtype=np.float64)
        if y.min(initial=1.0) == y.max(initial=0.0):  # all right or all wrong: a constant
            rate = float(np.clip(y.mean() if len(y) else 0.5, 1e-3, 1 - 1e-3))
            mean, std, w, b = (
                np.zeros(x.shape[1]),
                np.ones(x.shape[1]),
                np.zeros(x.shape[1]),
                float(np.log(rate / (1 - rate))),
            )
        else:
            mean, std, w, b = fit_logistic(x, y)
        router = LevelRouter(mean=mean.tolist(), std=std.tolist(), coef=w.tolist(), intercept=b)
        p = router.probability(x)
        router.threshold = threshold_for_precision(p, y, target_precision, z, clusters)
        router.shape_thresholds = shape_thresholds(p, y, target_precision, shapes, z, clusters)
        router.language_thresholds = language_thresholds(p, y, target_precision, languages, z, clusters)
        router.kind_thresholds = kind_thresholds(p, y, target_precision, kinds)
        accepted = p >= router.thresholds_for(shapes, languages)
        router.fitted_coverage = float(accepted.mean()) if len(p) else 0.0
        router.fitted_precision = float(y[accepted].mean()) if accepted.any() else None
        levels[level] = router
    routing = RoutingModel(
        target_precision=target_precision, bound_z=z, levels=levels, fitted_on=fitted_on, n_fitted=len(inputs)
    )
    if nearest is not None:
        agrees = nearest.labels == per_level[4].argmax(axis=1)
        right = np.asarray(correct[4], dtype=bool)[agrees]
        similarity = nearest.similarity[agrees].astype(np.float64)
        # 20: threshold_for_precision's own floor (fewer is noise); both outcomes needed for a logistic
        if len(right) >= 20 and 0 < right.sum() < len(right):
            agreeing = _rows(clusters, agrees)
            threshold = threshold_for_precision(similarity, right, target_precision, z, agreeing)
            if (similarity >= threshold).any():  # else no similarity reached the target: no rule
                mean, std, w, b = fit_logistic(match_features(similarity), right.astype(np.float64))
                routing.match_router = LevelRouter(
                    mean=mean.tolist(), std=std.tolist(), coef=w.tolist(), intercept=b
                )
                routing.match_similarity = threshold
                routing.match_shape_similarities = shape_thresholds(
                    similarity, right, target_precision, shapes[agrees], z, agreeing
                )
                routing.match_language_similarities = language_thresholds(
                    similarity, right, target_precision, languages[agrees], z, agreeing
                )
                agreeing_kinds = np.asarray(kinds)[agrees].tolist() if kinds is not None else None
                routing.match_kind_similarities = kind_thresholds(
                    similarity, right, target_precision, agreeing_kinds
                )
                matched = routing.matched(per_level[4].argmax(axis=1), nearest, shapes, languages)[agrees]
                routing.match_coverage = float(matched.sum() / len(agrees))
                routing.match_precision = float(right[matched].mean()) if matched.any() else None
    return routing


def routing_stage(state: TrainState) -> None:
    """Routers for auto-coding: on validation (held-out occupations: titles like those users send), the
    probability that the answer at each level is right from score features, per-level thresholds that
    reach `routing_precision`, and the match rule's similarity (shared.routing). Needs the combined
    probabilities, so it runs after signals; validation is not in the kNN index yet, so each record's
    nearest training text is another record's, as a user's new answer would find."""
    if not state.has_val or state.val_logits is None or state.val_embeddings is None:
        return
    codes = state.codes
    probs, nearest = val_scores(state)
    if state.val_duties_rows is not None and state.val_duties_probs is not None:
        rows = state.val_duties_rows
        probs[rows] = fuse_views(probs[rows], state.val_duties_probs, state.duties_weight)
    hierarchy = Hierarchy.from_codes(codes)
    per_level = level_probabilities(probs, hierarchy)
    gold = [codes[i] for i in state.val_labels]
    # each record's language as serving holds it (no hint: a model input read as one text)
    model_languages = state.config.languages
    readings = read_languages(state.val_texts, [""] * len(state.val_texts), None, model_languages)
    clusters = np.asarray(state.val_groups, dtype=str) if state.val_groups is not None else None
    state.routing_data = RoutingData(
        per_level,
        correct_by_level(per_level, hierarchy, [{g} for g in gold]),
        RecordInputs.from_texts(state.val_texts, routing_languages(readings, model_languages)),
        nearest,
        state.val_kinds,
        clusters=clusters,
    )
    state.routing = fit_routing(
        per_level,
        state.routing_data.correct,
        state.routing_data.inputs,
        target_precision=state.config.routing_precision,
        z=state.config.routing_bound_z,
        fitted_on=f"validation split ({len(gold)} records: unseen occupations and titles)",
        nearest=nearest,
        kinds=state.val_kinds,
        clusters=clusters,
    )


def routing_summary(routing: RoutingModel) -> dict[str, Any]:
    """Per level the threshold and what it auto-codes on validation, and the match rule ("match")."""
    summary: dict[str, Any] = {
        str(level): {
            "threshold": round(r.threshold, 4),
            "shape_thresholds": {s: round(t, 4) for s, t in r.shape_thresholds.items()},
            "language_thresholds": {s: round(t, 4) for s, t in r.language_thresholds.items()},
            "val_coverage": r.fitted_coverage,
            "val_precision": r.fitted_precision,
            "kind_thresholds": {k: round(t, 4) for k, t in r.kind_thresholds.items()},
        }
        for level, r in routing.levels.items()
    }
    summary["match"] = {
        "similarity": routing.match_similarity,
        "shape_similarities": {s: round(t, 4) for s, t in routing.match_shape_similarities.items()},
        "language_similarities": {s: round(t, 4) for s, t in routing.match_language_similarities.items()},
        "val_coverage": routing.match_coverage,
        "val_precision": routing.match_precision,
        "kind_similarities": {k: round(t, 4) for k, t in routing.match_kind_similarities.items()},
    }
    return summary
