"""What averaging separately trained models would add on the dev sets (issue 10): the variance of one run.

Usage: python -m bench.experiments.ensemble MODEL_DIR MODEL_DIR [MODEL_DIR ...]

Scores the dev sets with each model through the scorer every service uses (its default backend, every signal
and the reranker), then with the mean of their unit-group probabilities. Prints top-1 / top-3 and ECE of the
top probability for each model and for the mean, and how often every model gives the same top-1. Nothing is
fitted: the mean has no weights. An ensemble costs one scorer per model: the speed of one model divided by
their number.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bench.devsets import accepted_codes, load_devsets, topk_accuracy
from services.trainer.metrics import expected_calibration_error
from shared.model.scorer import UnitScorer


def _row(name: str, probs: np.ndarray, accept: list[set[str]], codes: list[str]) -> str:
    top1 = topk_accuracy(probs, accept, codes, 1)
    correct = np.array([codes[j] in a for j, a in zip(probs.argmax(axis=1), accept, strict=True)])
    ece = expected_calibration_error(probs.max(axis=1), correct)
    return f"  {name:28} top-1 {top1:.3f}  top-3 {topk_accuracy(probs, accept, codes, 3):.3f}  ECE {ece:.3f}"


def main(model_dirs: list[Path]) -> None:
    scorers = [UnitScorer.load(d) for d in model_dirs]
    codes = scorers[0].codes
    if any(s.codes != codes for s in scorers):
        raise SystemExit("the models have different label maps")
    for name, dev in load_devsets().items():
        texts, accept = dev.texts(), accepted_codes(dev)
        probs = [s.unit_probabilities(texts) for s in scorers]
        print(f"{name} ({len(texts)} records)")
        for scorer, p in zip(scorers, probs, strict=True):
            print(_row(scorer.version, p, accept, codes))
        print(_row(f"mean of {len(probs)}", np.mean(probs, axis=0), accept, codes))
        # an ensemble helps only where the models disagree: the share of records with the same top-1
        answers = [p.argmax(axis=1) for p in probs]
        agree = np.mean([np.all([a == answers[0] for a in answers[1:]], axis=0)])
        print(f"  same top-1 from every model: {agree:.3f}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main([Path(a) for a in sys.argv[1:]])
