"""Duties-aware scoring (issue 10): does scoring the title alone, and the duties alone, beside the record as
a whole add anything on records with duties?

Usage: python -m bench.experiments.duties_views MODEL_DIR

For the O*NET dev records (title + task statement) the model scores three views: the record as one text (what
the services do), the title alone and the duties alone. The views are combined as a product of experts,
log p = log p_whole + a log p_title + b log p_duties (renormalised), over a grid of a and b. This is a
diagnostic of the headroom, read on the dev set: weights for the services would have to be chosen on
validation (held-out occupations), and the model's own validation records are in its indexes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bench.accuracy import _accepted, load_devsets, topk_accuracy
from services.trainer.evaluate import expected_calibration_error
from shared.model.scorer import UnitScorer
from shared.text import model_input


def product(views: list[np.ndarray], weights: list[float]) -> np.ndarray:
    log = sum(w * np.log(np.clip(v, 1e-12, None)) for v, w in zip(views, weights, strict=True))
    log = log - log.max(axis=1, keepdims=True)
    p = np.exp(log)
    return p / p.sum(axis=1, keepdims=True)


def main(model_dir: Path) -> None:
    scorer = UnitScorer.load(model_dir)
    codes = scorer.codes
    dev = load_devsets()["onet_jobs_dev"]
    accept = _accepted(dev)
    whole = scorer.unit_probabilities(dev.texts())
    title = scorer.unit_probabilities([model_input(t, "") for t in dev.job_titles])
    duties = scorer.unit_probabilities([model_input("", d) for d in dev.duties])
    for name, p in (("whole", whole), ("title alone", title), ("duties alone", duties)):
        print(f"{name:14} top-1 {topk_accuracy(p, accept, codes, 1):.3f} top-3 {topk_accuracy(p, accept, codes, 3):.3f}")
    for a in (0.0, 0.25, 0.5, 1.0):
        for b in (0.0, 0.25, 0.5):
            p = product([whole, title, duties], [1.0, a, b])
            hit = np.array([codes[j] in ok for j, ok in zip(p.argmax(axis=1), accept, strict=True)])
            print(
                f"title {a:4.2f} duties {b:4.2f}: top-1 {hit.mean():.3f} "
                f"top-3 {topk_accuracy(p, accept, codes, 3):.3f} "
                f"ECE {expected_calibration_error(p.max(axis=1), hit):.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
