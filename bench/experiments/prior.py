"""What the prior correction (shared.model.prior) adds on the dev sets (issue 10).

Usage: python -m bench.experiments.prior MODEL_DIR

Scores the dev sets once with the model as shipped (every signal, the reranker), then applies its stored
prior correction at the strength training fitted on validation, and at strength 0 (the probabilities
without it). Prints top-1 / top-3, ECE of the top probability, and the class-balanced top-1 (every unit group
of the dev set weighs the same) of each. Nothing is fitted here: the strength was chosen in training on
held-out occupations (`prior_stage`). The routers were fitted on the corrected probabilities, so routing is
measured with `python -m bench.accuracy`, not here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bench.accuracy import _accepted, load_devsets, topk_accuracy
from shared.model.scorer import UnitScorer
from shared.routing import expected_calibration_error


def main(model_dir: Path) -> None:
    scorer = UnitScorer.load(model_dir)
    prior, codes = scorer.signals.prior, scorer.codes
    if prior is None:
        raise SystemExit(f"{model_dir} has no prior correction (prior.json): train with prior_correction")
    print(
        f"{scorer.version}: strength {prior.strength} fitted on {prior.fitted_on}; class-balanced validation "
        f"top-1 {prior.val_balanced_before} -> {prior.val_balanced_after}"
    )
    scorer.signals.prior = None  # the probabilities before the correction; it is applied below
    for name, dev in load_devsets().items():
        texts, accept = dev.texts(), _accepted(dev)
        uncorrected = scorer.unit_probabilities(texts)
        gold = np.array(dev.gold)
        print(f"{name} ({len(texts)} records)")
        for strength in sorted({0.0, prior.strength}):
            probs = prior.apply(codes, uncorrected, strength)
            answers = [codes[j] for j in probs.argmax(axis=1)]
            correct = np.array([a in ok for a, ok in zip(answers, accept, strict=True)])
            groups, inverse = np.unique(gold, return_inverse=True)
            balanced = float((np.bincount(inverse, correct) / np.bincount(inverse)).mean())
            print(
                f"  strength {strength:.1f}: top-1 {topk_accuracy(probs, accept, codes, 1):.3f}  "
                f"top-3 {topk_accuracy(probs, accept, codes, 3):.3f}  "
                f"ECE {expected_calibration_error(probs.max(axis=1), correct):.3f}  "
                f"class-balanced top-1 {balanced:.3f} ({len(groups)} groups)",
                flush=True,
            )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
