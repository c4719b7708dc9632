"""The router fitted for auto-coding: on validation, the probability that each level's answer is right, the
thresholds that reach the target precision, and the match rule (the `routing` stage; the model itself is
shared/routing.py's `RoutingModel`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from services.trainer.signals_fit import val_scores
from services.trainer.state import TrainState
from shared.model.scorer import fuse_views
from shared.decision import Hierarchy, level_probabilities
from shared.routing import RecordInputs, RoutingModel, fit_routing


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
    correct = {
        level: np.array(
            [
                g.startswith(hierarchy.group_codes[level][j])
                for g, j in zip(gold, p.argmax(axis=1), strict=True)
            ]
        )
        for level, p in per_level.items()
    }
    state.routing = fit_routing(
        per_level,
        correct,
        RecordInputs.from_texts(state.val_texts),
        target_precision=state.config.routing_precision,
        z=state.config.routing_bound_z,
        fitted_on=f"validation split ({len(gold)} records: unseen occupations and titles)",
        nearest=nearest,
        kinds=state.val_kinds,
    )


def routing_summary(routing: RoutingModel) -> dict[str, Any]:
    """Per level the threshold and what it auto-codes on validation, and the match rule ("match")."""
    summary: dict[str, Any] = {
        str(level): {
            "threshold": round(r.threshold, 4),
            "shape_thresholds": {s: round(t, 4) for s, t in r.shape_thresholds.items()},
            "val_coverage": r.fitted_coverage,
            "val_precision": r.fitted_precision,
            "kind_thresholds": {k: round(t, 4) for k, t in r.kind_thresholds.items()},
        }
        for level, r in routing.levels.items()
    }
    summary["match"] = {
        "similarity": routing.match_similarity,
        "shape_similarities": {s: round(t, 4) for s, t in routing.match_shape_similarities.items()},
        "val_coverage": routing.match_coverage,
        "val_precision": routing.match_precision,
        "kind_similarities": {k: round(t, 4) for k, t in routing.match_kind_similarities.items()},
    }
    return summary
