"""The duties view's weight: how much a record's duties tokens, pooled apart, count beside the whole record
(`shared.model.scorer.fuse_views`), chosen on validation's records with duties (the `duties_view` stage)."""

from __future__ import annotations

import logging

import numpy as np
import torch
from scipy.special import softmax

from services.trainer.signals_fit import fitted_signals, val_scores
from services.trainer.state import TrainState
from shared.model.scorer import fuse_views
from shared.text import duties_part

log = logging.getLogger(__name__)

DUTIES_WEIGHT_GRID = tuple(round(0.05 * i, 2) for i in range(11))  # 0 .. 0.5


def duties_view_stage(state: TrainState) -> None:
    """The duties view's weight (`duties_weight`): validation's records with duties are scored on their duties
    tokens as well (`IscoClassifier.embed_views`: pooled apart in the record's own pass), and the weight of
    that view (0 - 0.5) is the one with the highest validation accuracy on them, ties to the lower log loss,
    as the signal weights are chosen. Runs after the reranker, so the views fused are what the services
    compute, and before routing, which is fitted on the fused probabilities. A corrections run (no
    validation) keeps its parent's weight."""
    fixed = state.config.duties_weight
    if not state.has_val or state.val_logits is None or state.val_duties_embeddings is None:
        state.duties_weight = fixed if fixed is not None else state.parent_duties_weight
        return
    # duties truncated away have no view: a zero vector (as in the scorer)
    has_view = np.asarray(state.val_duties_embeddings.any(axis=1))
    rows = np.array(
        [i for i, t in enumerate(state.val_texts) if duties_part(t) and has_view[i]], dtype=np.int64
    )
    if len(rows) == 0 or fixed == 0:
        state.duties_weight = fixed or 0.0
        return
    model, _ = state.require_model()
    embeddings = state.val_duties_embeddings[rows]
    duties = [duties_part(state.val_texts[i]) for i in rows]
    with torch.no_grad():
        logits = model.logits_from_embeddings(torch.from_numpy(embeddings)).numpy()
    alone = fitted_signals(state).mix(duties, embeddings, softmax(logits / state.temperature, axis=1))
    whole = val_scores(state, rows)[0]
    labels = state.val_labels[rows]
    grid = DUTIES_WEIGHT_GRID if fixed is None else (fixed,)
    scores = {}
    for weight in {0.0, *grid}:
        p = fuse_views(whole, alone, weight)
        nll = float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None)).mean())
        scores[weight] = (round(float((p.argmax(1) == labels).mean()), 4), -nll)
    state.duties_weight = max(grid, key=lambda w: scores[w])
    state.val_duties_rows, state.val_duties_probs = rows, alone
    state.duties_view = {
        "weight": state.duties_weight,
        "val_records": len(rows),
        "val_accuracy_before": scores[0.0][0],
        "val_accuracy_after": scores[state.duties_weight][0],
    }
    log.info(
        "duties view: weight %.2f, validation top-1 on %d records with duties %.4f -> %.4f",
        state.duties_weight,
        len(rows),
        scores[0.0][0],
        scores[state.duties_weight][0],
    )
