"""Does the training corpus's class prior cost accuracy on the dev sets? (issue 10)

Usage: python -m bench.experiments.label_prior MODEL_DIR

Every signal learns how often each unit group occurs in the training records. In ESCO that share follows how
finely ESCO splits a unit group into occupations and how many labels its editors wrote: the 50 largest unit
groups hold 46% of ESCO's titles, but 19% of the ILO dev titles and 29% of the O*NET dev records. Two ways to
take the prior back, applied to the model's probabilities (every signal and the reranker):

- post-hoc logit adjustment (Menon et al., ICLR 2021): divide by prior ** strength; strength 1 is the
  optimum for class-balanced accuracy, which is what a strength fitted for it on held-out occupations chose
  (1.0, the top of the 0-1 grid: `prior_correction` at commit 7a9e6f6, reverted after this measurement);
- the EM re-estimation of a file's own class mix from its unlabelled records (Saerens et al., Neural
  Computation 2002), smoothed towards the training prior by `alpha` pseudo-records per unit group. It makes
  one record's answer depend on the rest of its file.

Prints top-1 / top-3 and the class-balanced top-1 (every unit group of the dev set weighs the same) of each.
The prior is the share of the default corpus's records per unit group (the training split is 90% of it,
drawn by occupation within each unit group).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np

from bench.devsets import accepted_codes, load_devsets, topk_accuracy
from shared.corpus import build_default_corpus
from shared.model.scorer import UnitScorer


def adjusted(probs: np.ndarray, log_prior: np.ndarray, strength: float) -> np.ndarray:
    out = probs * np.exp(-strength * (log_prior - log_prior.max()))[None, :]
    return out / out.sum(axis=1, keepdims=True)


def em_adapted(probs: np.ndarray, prior: np.ndarray, alpha: float, iterations: int = 30) -> np.ndarray:
    """Posteriors under the class mix that EM estimates from the records themselves."""
    mix = prior.copy()
    posterior = probs
    for _ in range(iterations):
        posterior = probs * (mix / prior)[None, :]
        posterior /= posterior.sum(axis=1, keepdims=True)
        mix = (posterior.sum(axis=0) + alpha * prior * len(prior)) / (len(probs) + alpha * len(prior))
    return posterior


def balanced_top1(probs: np.ndarray, accept: list[set[str]], gold: list[str], codes: list[str]) -> float:
    correct = np.array([codes[j] in ok for j, ok in zip(probs.argmax(axis=1), accept, strict=True)])
    _, inverse = np.unique(gold, return_inverse=True)
    return float((np.bincount(inverse, correct) / np.bincount(inverse)).mean())


def main(model_dir: Path) -> None:
    scorer = UnitScorer.load(model_dir)
    codes = scorer.codes
    counts = Counter(r.isco_code for r in build_default_corpus())
    prior = np.array([max(counts.get(c, 0), 1) for c in codes], dtype=np.float64)
    prior /= prior.sum()
    for name, dev in load_devsets().items():
        texts, accept = dev.texts(), accepted_codes(dev)
        probs = scorer.unit_probabilities(texts).astype(np.float64)
        variants = {"as shipped": probs}
        for strength in (0.5, 1.0):
            variants[f"prior ** -{strength}"] = adjusted(probs, np.log(prior), strength)
        for alpha in (1.0, 10.0):
            variants[f"EM on the file, alpha {alpha:g}"] = em_adapted(probs, prior, alpha)
        print(f"{name} ({len(texts)} records, {len(set(dev.gold))} unit groups)")
        for label, p in variants.items():
            print(
                f"  {label:26} top-1 {topk_accuracy(p, accept, codes, 1):.3f}  "
                f"top-3 {topk_accuracy(p, accept, codes, 3):.3f}  "
                f"class-balanced top-1 {balanced_top1(p, accept, dev.gold, codes):.3f}",
                flush=True,
            )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
