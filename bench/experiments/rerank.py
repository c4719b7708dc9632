"""The second stage (shared.model.rerank): what the reranker adds on the dev sets, fitted on held-out
occupations.

A full model trained with `ISCO_REFIT_HEAD_EPOCHS=0` keeps a head that never saw the validation records, and
its kNN index holds train, validation and test records in that order. The validation features are computed
as the rerank stage sees them in training: validation entries removed from the kNN and lexical indexes. The
reranker is fitted there (the production `fit_reranker`) and applied to the dev sets with the model as
shipped (every record indexed); `--refit` also applies it after the pipeline's head refit, as a full
training with both would.

    python -m bench.experiments.rerank var/models/VERSION [--refit] [--k 20]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from scipy.special import softmax

from bench.devsets import accepted_codes, load_devsets
from services.trainer.metrics import coverage_at_precision, expected_calibration_error
from shared.model.lexical import LexicalIndex
from shared.model.rerank import FEATURES, fit_reranker
from shared.model.scorer import UnitScorer
from shared.model.signals import Signals


def dev_scores(scorer: UnitScorer, reranker=None) -> dict[str, dict[str, float]]:
    out = {}
    for name, dev in load_devsets().items():
        accepted = accepted_codes(dev)
        texts = dev.texts()
        emb = scorer.embed(texts)
        head = softmax(scorer.head_logits(emb) / scorer.temperature, axis=1)
        mixed, parts = scorer.signals.first_stage(texts, emb, head)
        for label, probs in (("first stage", mixed),) + (
            (("reranked", reranker.rerank(scorer.codes, mixed, parts)),) if reranker is not None else ()
        ):
            order = np.argsort(-probs, axis=1)[:, :3]
            hit = np.array(
                [[scorer.codes[j] in ok for j in row] for row, ok in zip(order, accepted, strict=True)]
            )
            conf = probs.max(axis=1)
            out[f"{name} {label}"] = {
                "top1": round(float(hit[:, 0].mean()), 4),
                "top3": round(float(hit.any(axis=1).mean()), 4),
                "ece": round(expected_calibration_error(conf, hit[:, 0]), 4),
                "coverage@95": round(coverage_at_precision(conf, hit[:, 0], 0.95)["coverage"], 4),
            }
    return out


FEATURE_SETS = {
    "probabilities": ("head", "knn", "lexical"),
    "+ group masses": ("head", "knn", "lexical", "minor", "sub_major", "major"),
    "+ similarities": ("head", "knn", "lexical", "minor", "sub_major", "major", "knn_similarity",
                       "lexical_similarity"),
    "all": FEATURES,
}  # fmt: skip


def cross_validate(codes, mixed, parts, labels, k) -> dict[str, dict[str, float]]:
    """Two folds of the validation records by unit group (no record's group in the fold it is scored on):
    top-1, log loss and ECE of the first stage and of the reranker fitted on the other fold."""
    fold = np.array([hash(codes[y]) % 2 for y in labels])  # str hash: seeded per process, fine for halves
    rows = np.arange(len(labels))
    out: dict[str, dict[str, float]] = {}
    variants = {"first stage": None, **FEATURE_SETS}
    for name, features in variants.items():
        probs = np.zeros_like(mixed)
        for f in (0, 1):
            fit, score = fold != f, fold == f
            if features is None:
                probs[score] = mixed[score]
                continue
            reranker = fit_reranker(
                codes, mixed[fit], {n: p[fit] for n, p in parts.items()}, labels[fit], k=k, features=features
            )
            probs[score] = reranker.rerank(codes, mixed[score], {n: p[score] for n, p in parts.items()})
        correct = probs.argmax(1) == labels
        out[name] = {
            "top1": round(float(correct.mean()), 4),
            "log_loss": round(float(-np.log(probs[rows, labels] + 1e-12).mean()), 4),
            "ece": round(expected_calibration_error(probs.max(1), correct), 4),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--refit", action="store_true")
    parser.add_argument("--k", type=int, default=20)
    args = parser.parse_args()
    scorer = UnitScorer.load(args.model_dir, backend="torch", quantize="none", device="cpu")
    stats = json.loads((args.model_dir / "metrics.json").read_text())["training"]["preprocess"]
    n_train, n_val = stats["train"], stats["val"]
    signals = scorer.signals
    knn, lexical = signals.knn, signals.lexical
    assert knn is not None and knn.texts is not None and lexical is not None
    assert len(knn) == len(lexical) == n_train + n_val + stats["test"], "needs every record indexed"
    val = np.arange(n_train, n_train + n_val)
    keep = np.setdiff1d(np.arange(len(knn)), val)
    from shared.model.knn import KnnIndex

    held_out = Signals(
        scorer.codes,
        KnnIndex(knn.embeddings[keep], knn.labels[keep], [knn.texts[i] for i in keep]),
        signals.knn_config,
        LexicalIndex(lexical.vectorizer, lexical.matrix[keep], lexical.labels[keep]),
        signals.lexical_config,
    )
    val_emb, val_labels = knn.embeddings[val], knn.labels[val]
    val_texts = [knn.texts[i] for i in val]
    head = softmax(scorer.head_logits(val_emb) / scorer.temperature, axis=1)
    mixed, parts = held_out.first_stage(val_texts, val_emb, head)
    for name, row in cross_validate(scorer.codes, mixed, parts, val_labels, args.k).items():
        print(f"validation, 2 folds by unit group: {name:16s} {row}")
    reranker = fit_reranker(scorer.codes, mixed, parts, val_labels, k=args.k, fitted_on="bench")
    print(reranker.model_dump_json(indent=1))
    results = {"as trained": dev_scores(scorer, reranker)}
    if args.refit:
        from services.trainer.head import refit_head

        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "model"
            shutil.copytree(args.model_dir, copy, ignore=shutil.ignore_patterns("onnx"))
            refit_head(copy, 3, 3e-4, 42)
            refitted = UnitScorer.load(copy, backend="torch", quantize="none", device="cpu")
            results["head refitted"] = dev_scores(refitted, reranker)
    for state, rows in results.items():
        for name, r in rows.items():
            print(f"{state:14s} {name:32s} {r}")


if __name__ == "__main__":
    main()
