"""The duties view (issue 10, `duties_view` training stage): what a record's duties add beside the whole
record on the O*NET dev records (title + task statement).

Usage: python -m bench.experiments.duties_views MODEL_DIR

The services fuse two views as a weighted geometric mean, (1 - w) log p_whole + w log p_duties
(`shared.model.scorer.fuse_views`), with the weight training chose on validation's records with duties
(held-out ESCO occupations, never the dev sets); their duties view is the record's duties tokens pooled apart
in its own encoder pass. This prints the dev figures as the services compute them and at weight 0 (the record
as one text), and, as a diagnostic of the headroom only, with the duties encoded alone in a second pass (the
form shipped before, at twice the cost: bench/experiments/duties_view_cost.py) over a grid of weights and with
a third view, the title alone. ILO titles have no duties: the duties view leaves them as they are.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.special import softmax

from bench.devsets import accepted_codes, load_devsets, topk_accuracy
from services.trainer.metrics import expected_calibration_error
from shared.model.scorer import UnitScorer
from shared.text import model_input


def views(scorer: UnitScorer, titles: list[str], duties: list[str]) -> dict[str, np.ndarray]:
    """Probabilities of the whole records, the duties alone and the titles alone (no fusion)."""
    weight, scorer.duties_weight = scorer.duties_weight, 0.0
    try:
        return {
            "whole": scorer.unit_probabilities(
                [model_input(t, d) for t, d in zip(titles, duties, strict=True)]
            ),
            "duties": scorer.unit_probabilities([model_input("", d) for d in duties]),
            "title": scorer.unit_probabilities([model_input(t, "") for t in titles]),
        }
    finally:
        scorer.duties_weight = weight


def fused(parts: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """Weighted geometric mean of the views (the whole record takes what the others leave)."""
    rest = 1 - sum(weights.values())
    log = rest * np.log(np.clip(parts["whole"], 1e-12, None))
    for name, w in weights.items():
        log = log + w * np.log(np.clip(parts[name], 1e-12, None))
    return softmax(log, axis=1)


def main(model_dir: Path) -> None:
    scorer = UnitScorer.load(model_dir)
    codes = scorer.codes
    dev = load_devsets()["onet_jobs_dev"]
    accept = accepted_codes(dev)
    parts = views(scorer, dev.job_titles, dev.duties)

    def row(label: str, p: np.ndarray) -> None:
        hit = np.array([codes[j] in ok for j, ok in zip(p.argmax(axis=1), accept, strict=True)])
        print(
            f"  {label:34} top-1 {hit.mean():.3f}  top-3 {topk_accuracy(p, accept, codes, 3):.3f}  "
            f"ECE {expected_calibration_error(p.max(axis=1), hit):.3f}",
            flush=True,
        )

    print(f"{model_dir.name} ({scorer.backend}), O*NET dev, {len(dev)} records with duties")
    for name, p in parts.items():
        row(f"{name} alone" if name != "whole" else "whole record (weight 0)", p)
    row(f"as the services do (weight {scorer.duties_weight:.2f})", scorer.unit_probabilities(dev.texts()))
    print("diagnostic (dev, not for choosing):")
    for w in (0.1, 0.2, 0.3, 0.4, 0.5):
        row(f"duties {w:.2f}", fused(parts, {"duties": w}))
    for a in (0.1, 0.2):
        row(f"duties 0.20, title {a:.2f}", fused(parts, {"duties": 0.2, "title": a}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
