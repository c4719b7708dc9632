"""Does the nearest training text make the router surer? (issue 10: auto-coding at a target precision)

    python -m bench.experiments.routing_similarity MODEL_DIR

The shipped router (shared.routing) reads the answer's probabilities only. Statistics Austria auto-codes
most of what it auto-codes from string similarity to an already coded answer; this experiment adds, for the
4-digit answer, its best similarity among the kNN neighbours (embedding), among the lexical neighbours
(character n-grams), the nearest neighbour's similarity whatever its code, and whether that neighbour has
the answer's code. Routers are fitted on the model's validation split (its entries taken out of the
indexes, as training's routing stage sees it) with the probability features alone and with these added;
thresholds for 95% precision on validation. The dev sets are only scored: share auto-coded at the
validation threshold and its precision, the largest share any threshold could auto-code at 95% (oracle,
a diagnostic), router ECE, and AUROC of the router's confidence for "the answer is right".

On v20261203-034002-bcf8 (bench/results/routing_similarity-20261203T040459Z.json) the similarities add
nothing to a logistic router: dev AUROC 0.794 -> 0.783 (ILO), 0.748 -> 0.743 (O*NET). What they carry is
a threshold, not a slope: an answer whose nearest training text agrees at cosine >= ~0.95 is right ~96% of
the time on ILO titles. That became a rule of its own, fitted on validation (`shared.routing`
`RoutingModel.match_similarity`). (This model's validation split reads easier than it did in training: the
head was refitted on the indexed validation records after routing was fitted, so validation figures here
are a comparison between the two routers, not an estimate.)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.devsets import accepted_codes, load_devsets
from bench.experiments.exp_common import held_out_signals
from services.trainer.metrics import coverage_at_precision, expected_calibration_error
from services.trainer.routing_fit import fit_logistic, threshold_for_precision
from shared.decision import Hierarchy, level_probabilities
from shared.model.scorer import UnitScorer
from shared.routing import record_inputs, routing_features
from shared.screening import flagged, read_languages
from shared.text import TITLE_SEPARATOR, duties_part

SIMILARITY_FEATURES = ("knn_similarity", "lexical_similarity", "nearest_similarity", "nearest_agrees")


def similarity_features(scorer: UnitScorer, texts: list[str], top1: np.ndarray) -> np.ndarray:
    """(n, 4): the answer's best kNN and lexical similarity, the nearest neighbour's similarity, and whether
    the nearest neighbour has the answer's code."""
    embeddings = scorer.embed(texts)
    parts = scorer.signals.probabilities(texts, embeddings)
    rows = np.arange(len(texts))
    knn_sim = parts["knn_similarity"]
    lexical = parts.get("lexical_similarity", np.zeros_like(knn_sim))
    return np.c_[
        knn_sim[rows, top1],
        lexical[rows, top1],
        knn_sim.max(axis=1),
        (knn_sim.argmax(axis=1) == top1).astype(np.float64),
    ]


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a right answer scores above a wrong one (ties count half)."""
    ranks = np.argsort(np.argsort(score, kind="stable"), kind="stable") + 1.0
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ranks = np.bincount(inverse, ranks) / counts  # average ranks of ties
    ranks = ranks[inverse]
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / max(n_pos * n_neg, 1))


def inputs(scorer: UnitScorer, hierarchy: Hierarchy, titles, duties, texts, accepted):
    """Router features (probabilities only, and with similarities), whether the answer is right, flags."""
    probs = scorer.unit_probabilities(texts)
    top1 = probs.argmax(axis=1)
    right = np.array([scorer.codes[j] in a for j, a in zip(top1, accepted, strict=True)])
    base = routing_features(level_probabilities(probs, hierarchy)[4], record_inputs(titles, duties, texts))
    return (
        base,
        np.c_[base, similarity_features(scorer, texts, top1)],
        right,
        flagged(titles, duties, read_languages(titles, duties)),
    )


def main(model_dir: Path) -> None:
    t0 = time.time()
    scorer = UnitScorer.load(model_dir, device="cpu")
    hierarchy = Hierarchy.from_codes(scorer.codes)
    knn = scorer.signals.knn
    assert knn is not None and knn.texts is not None
    held, val_idx = held_out_signals(scorer, model_dir)
    val_texts = [knn.texts[i] for i in val_idx]
    val_titles = [t.partition(TITLE_SEPARATOR)[0] for t in val_texts]
    val_duties = [duties_part(t) for t in val_texts]
    val_accept = [{scorer.codes[int(knn.labels[i])]} for i in val_idx]
    shipped, scorer.signals = scorer.signals, held
    val = inputs(scorer, hierarchy, val_titles, val_duties, val_texts, val_accept)
    scorer.signals = shipped
    devs = {
        name: inputs(scorer, hierarchy, dev.job_titles, dev.duties, dev.texts(), accepted_codes(dev))
        for name, dev in load_devsets().items()
    }
    results: dict = {"model": str(model_dir), "validation_n": len(val_texts)}
    for variant, column in (("probabilities", 0), ("+ similarities", 1)):
        x, y = val[column], val[2]
        mean, std, w, b = fit_logistic(x, y.astype(np.float64))

        def router(x: np.ndarray, mean=mean, std=std, w=w, b=b) -> np.ndarray:
            return 1.0 / (1.0 + np.exp(-np.clip(((x - mean) / std) @ w + b, -40, 40)))

        p_val = router(x)
        threshold = threshold_for_precision(p_val, y, 0.95)
        row = {
            "validation": {
                "auto": float((p_val >= threshold).mean()),
                "auroc": auroc(p_val, y),
                "threshold": threshold,
            },
            "coef": dict(zip([*range(x.shape[1])], np.round(w, 3).tolist(), strict=True)),
        }
        for name, (base, full, right, flags) in devs.items():
            p = router(full if column else base)
            auto = (p >= threshold) & ~flags
            row[name] = {
                "auto": float(auto.mean()),
                "auto_precision": float(right[auto].mean()) if auto.any() else None,
                "oracle_coverage_at_95": coverage_at_precision(p, right, 0.95)["coverage"],
                "ece": expected_calibration_error(p, right),
                "auroc": auroc(p, right),
            }
        results[variant] = row
        print(variant, json.dumps(row, indent=None), flush=True)
    results["seconds"] = round(time.time() - t0)
    out = Path("bench/results") / f"routing_similarity-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
