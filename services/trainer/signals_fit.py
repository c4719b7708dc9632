"""The kNN and lexical signals fitted to a model: which texts the indexes hold, the mixing weights chosen on
validation, the reranker over them, and the indexes extended with validation (after everything is chosen on
it) and test records (after the test split is scored, services/trainer/pipeline.py)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.special import softmax

from services.trainer.records import Example
from services.trainer.state import TrainState
from shared.model.classifier import encode_texts
from shared.model.knn import KnnConfig, KnnIndex, knn_probabilities
from shared.model.lexical import LexicalConfig, LexicalIndex
from shared.model.rerank import fit_reranker
from shared.model.signals import NearestMatch, Signals, extend_indexes, search_weights
from shared.text import duties_part

log = logging.getLogger(__name__)


def signals_stage(state: TrainState) -> None:
    """Build the kNN (with its training texts) and lexical indexes; choose the weights of both in one search
    on validation (weights fixed by the profile are kept, and their validation accuracy reported)."""
    model, tokenizer = state.require_model()
    config, codes = state.config, state.codes
    if not state.train_texts:
        return
    candidates: dict[str, dict[float, np.ndarray]] = {}
    fixed: dict[str, float | None] = {}
    if config.knn:
        entries = index_entries(state.train_texts, config.knn_max_index, config.seed)
        texts = [state.train_texts[i] for i in entries]
        if state.train_embeddings is not None and not state.trainer_ran:
            embeddings = state.train_embeddings[entries]  # the encoder did not change since they were made
        else:
            embeddings = encode_texts(
                model, tokenizer, texts, device=state.device, max_length=config.max_length
            )
        index = KnnIndex(embeddings, np.asarray(state.train_labels)[entries], texts)
        if state.parent_signals is not None and state.parent_signals.knn is not None:
            # Corrections: keep the parent's entries (embedded by the parent encoder, which a short
            # corrections run changes little) and add the new texts, so the vote does not shrink to the
            # replay sample.
            index = _merge_knn(state.parent_signals.knn, state.parent_label_map, index)
        state.knn_index = index
        # a fixed weight keeps the profile's vote temperature; otherwise it is searched with the weight
        taus = sorted({config.knn_tau} | (set() if config.knn_weight is not None else {0.02, 0.05, 0.1}))
        fixed["knn"] = config.knn_weight
        knn_config = KnnConfig(k=config.knn_k, tau=config.knn_tau, weight=config.knn_weight or 0.0)
        if state.has_val:
            assert state.val_embeddings is not None
            candidates["knn"] = {
                tau: knn_probabilities(
                    state.val_embeddings, index, knn_config.model_copy(update={"tau": tau}), len(codes)
                )
                for tau in taus
            }
        state.knn_config = knn_config
    if config.lexical:
        lexical_config = LexicalConfig(
            k=config.lexical_k,
            tau=config.lexical_tau,
            weight=config.lexical_weight or 0.0,
            max_df=config.lexical_max_df,
        )
        if state.parent_signals is not None and state.parent_signals.lexical is not None:
            parent = state.parent_signals.lexical
            labels = (
                state.parent_label_map[parent.labels] if state.parent_label_map is not None else parent.labels
            )
            keep = np.flatnonzero(labels >= 0)
            state.lexical_index = parent.extended(keep, labels[keep], state.train_texts, state.train_labels)
        else:
            state.lexical_index = LexicalIndex.build(state.train_texts, state.train_labels, lexical_config)
        fixed["lexical"] = config.lexical_weight
        if state.has_val:
            candidates["lexical"] = {
                lexical_config.tau: state.lexical_index.probabilities(
                    state.val_texts, lexical_config, len(codes)
                )
            }
        state.lexical_config = lexical_config
    if state.has_val and candidates:
        assert state.val_logits is not None
        head = softmax(state.val_logits / state.temperature, axis=1)
        choice = search_weights(head, candidates, state.val_labels, fixed)
        state.val_accuracy_combined = choice.val_accuracy
        if state.knn_config is not None:
            state.knn_config.weight = round(choice.weights["knn"], 3)
            state.knn_config.tau = choice.taus["knn"]
            state.knn_config.val_accuracy = choice.val_accuracy
        if state.lexical_config is not None:
            state.lexical_config.weight = round(choice.weights["lexical"], 3)
            state.lexical_config.val_accuracy = choice.val_accuracy
    else:  # no validation split (corrections): the profile's weights, else the parent's
        parent_signals = state.parent_signals
        if state.knn_config is not None and config.knn_weight is None:
            parent_knn = parent_signals.knn_config if parent_signals is not None else None
            state.knn_config.weight = parent_knn.weight if parent_knn is not None else 0.2
        if state.lexical_config is not None and config.lexical_weight is None:
            parent_lex = parent_signals.lexical_config if parent_signals is not None else None
            state.lexical_config.weight = parent_lex.weight if parent_lex is not None else 0.0


def rerank_stage(state: TrainState) -> None:
    """The second stage (`rerank`): a conditional-logit fusion of the top candidates' signal probabilities and
    group masses, fitted on validation with the signals as they stand (the held-out occupations are not in
    the indexes yet), so its weights and probabilities are those of titles the model has not seen. A
    corrections run refits it on the original validation split; without one it keeps its parent's."""
    config = state.config
    if not config.rerank:
        return
    if not state.has_val or state.val_logits is None or state.val_embeddings is None:
        state.reranker = state.parent_signals.reranker if state.parent_signals is not None else None
        return
    signals = Signals(
        state.codes, state.knn_index, state.knn_config, state.lexical_index, state.lexical_config
    )
    mixed, parts = signals.first_stage(
        state.val_texts, state.val_embeddings, softmax(state.val_logits / state.temperature, axis=1)
    )
    state.reranker = fit_reranker(
        state.codes,
        mixed,
        parts,
        state.val_labels,
        k=config.rerank_k,
        fitted_on=f"validation split ({len(state.val_labels)} records: unseen occupations and titles)",
    )
    log.info(
        "reranker: validation top-1 %.4f -> %.4f",
        state.reranker.val_accuracy_before,
        state.reranker.val_accuracy_after,
    )


def fitted_signals(state: TrainState) -> Signals:
    """The signals and reranker as they stand (the held-out occupations are not in the indexes yet)."""
    return Signals(
        state.codes,
        state.knn_index,
        state.knn_config,
        state.lexical_index,
        state.lexical_config,
        state.reranker,
    )


def val_scores(state: TrainState, rows: np.ndarray | None = None) -> tuple[np.ndarray, NearestMatch]:
    """Validation probabilities (of `rows` only, when given) of the whole model as it stands, before the
    duties view, and each record's nearest training text. Each row is scored on its own, so a subset reads
    as it would among all of validation."""
    assert state.val_logits is not None and state.val_embeddings is not None
    if rows is None:
        rows = np.arange(len(state.val_texts))
    head = softmax(state.val_logits[rows] / state.temperature, axis=1)
    return fitted_signals(state).score([state.val_texts[i] for i in rows], state.val_embeddings[rows], head)


def index_validation_stage(state: TrainState) -> None:
    """Validation records join the kNN and lexical indexes once everything has been chosen on them: the split
    holds out whole occupations, and a model without them loses ~2 points of dev top-1 (measured with
    bench/experiments/split_cost.py; a kNN over all records recovers most of it). Test records join only
    after the test split is scored (`services.trainer.pipeline`)."""
    if not state.config.index_validation or not state.has_val or state.val_embeddings is None:
        return
    state.knn_index, state.lexical_index, _ = extend_indexes(
        state.knn_index, state.lexical_index, state.val_texts, state.val_embeddings, state.val_labels
    )


def index_entries(texts: Sequence[str], max_items: int, seed: int) -> np.ndarray:
    """Which training texts the kNN index keeps, at most `max_items`, in order: every title first (texts
    without duties: ESCO labels and coding-index entries, with their industry), then a seeded sample of the
    texts with duties. Users send titles; the nearest coded title is what the kNN vote and the routing match
    rule read, and an index that sampled titles away would miss the very entries a survey answer repeats."""
    titles = np.array([i for i, t in enumerate(texts) if not duties_part(t)], dtype=np.int64)
    others = np.array([i for i, t in enumerate(texts) if duties_part(t)], dtype=np.int64)
    if len(titles) >= max_items:
        return titles[_sample(len(titles), max_items, seed)]
    kept = others[_sample(len(others), max_items - len(titles), seed)]
    return np.sort(np.concatenate([titles, kept]))


def _sample(n: int, max_items: int, seed: int) -> np.ndarray:
    """At most max_items of range(n), a seeded sample in order."""
    idx = np.arange(n)
    if n > max_items:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_items, replace=False))
    return idx


def _merge_knn(parent: KnnIndex, label_map: np.ndarray | None, new: KnnIndex) -> KnnIndex:
    """The parent's kNN entries (labels mapped to the new label order) followed by the new ones."""
    labels = label_map[parent.labels] if label_map is not None else parent.labels
    keep = labels >= 0
    texts = None
    if parent.texts is not None and new.texts is not None:  # models before knn_texts.json have none
        texts = [t for t, k in zip(parent.texts, keep, strict=True) if k] + new.texts
    return KnnIndex(
        np.vstack([parent.embeddings[keep], new.embeddings]),
        np.concatenate([labels[keep], new.labels]),
        texts,
    )


def index_records(model_dir: Path, examples: Sequence[Example]) -> int:
    """Add labelled records to a model directory's kNN and lexical indexes (embedded like training did);
    returns how many were new to them."""
    from shared.model.scorer import UnitScorer

    scorer = UnitScorer.load(model_dir, backend="torch", device="cpu", quantize="none")
    texts = [e.text for e in examples]
    label_of = {code: i for i, code in enumerate(scorer.codes)}
    labels = np.array([label_of[e.code] for e in examples], dtype=np.int64)
    knn, lexical, added = extend_indexes(
        scorer.signals.knn, scorer.signals.lexical, texts, scorer.embed(texts), labels
    )
    if knn is not None:
        knn.save(model_dir)
    if lexical is not None:
        lexical.save(model_dir)
    return added
