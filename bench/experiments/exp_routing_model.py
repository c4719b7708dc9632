"""Routing variants on a trained model directory (issue 10): do thresholds fitted on held-out occupations
hold their precision on the dev sets?

    python -m bench.experiments.exp_routing_model MODEL_DIR [PROFILE]   (PROFILE: the one it was trained with)

Rebuilds the model's validation split (the profile's preprocess settings over the default corpus), scores it
and the dev sets with the model, fits routers on validation only and reports, per variant, the dev sets'
auto-coded share and its precision: one threshold for all inputs (shipped), one per input kind (title alone /
title + duties), and stricter targets.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bench.devsets import accepted_codes, load_devsets
from services.trainer.config import PreprocessConfig, load_profile
from services.trainer.metrics import coverage_at_precision, expected_calibration_error
from services.trainer.preprocess import prepare
from services.trainer.records import rows_from_corpus
from services.trainer.routing_fit import fit_routing, threshold_for_precision
from shared.corpus import build_default_corpus
from shared.decision import Hierarchy, level_probabilities
from shared.model.scorer import UnitScorer
from shared.routing import record_inputs


def main(model_dir: Path, profile: str = "quick") -> None:
    settings = load_profile(profile, {"preprocess", "use_default_corpus"})
    pre = PreprocessConfig(**settings.get("preprocess", {}))
    pre.outliers.enabled = False
    prepared = prepare(rows_from_corpus(build_default_corpus()), pre)
    scorer = UnitScorer.load(model_dir, device="cpu")
    codes = scorer.codes
    hierarchy = Hierarchy.from_codes(codes)
    val = prepared.val
    texts = [e.text for e in val]
    probs = scorer.unit_probabilities(texts)
    per = level_probabilities(probs, hierarchy)
    gold = [e.code for e in val]
    correct = {
        lv: np.array(
            [g.startswith(hierarchy.group_codes[lv][j]) for g, j in zip(gold, p.argmax(1), strict=True)]
        )
        for lv, p in per.items()
    }
    inputs = record_inputs([e.job_title for e in val], [e.duties_description for e in val], texts)
    has = inputs.has_duties
    print(f"val n={len(val)} top-1 {correct[4].mean():.3f} (titles {correct[4][~has].mean():.3f}, "
          f"with duties {correct[4][has].mean():.3f})")  # fmt: skip
    devs = {}
    for name, dev in load_devsets().items():
        p = scorer.unit_probabilities(dev.texts())
        acc = accepted_codes(dev)
        ok = np.array([codes[j] in a for j, a in zip(p.argmax(1), acc, strict=True)])
        devs[name] = (
            level_probabilities(p, hierarchy),
            ok,
            record_inputs(dev.job_titles, dev.duties, dev.texts()),
        )
    for target in (0.95, 0.97):
        routing = fit_routing(per, correct, inputs, target_precision=target)
        p_val = routing.probabilities(per, inputs)[4]
        # per input kind: a threshold for titles alone and one for titles with duties, each at the target
        by_kind = {
            k: threshold_for_precision(p_val[has == k], correct[4][has == k], target) for k in (False, True)
        }
        for variant in ("one threshold", "per input kind"):
            cells = []
            for name, (dper, ok, dinputs) in devs.items():
                dhas = dinputs.has_duties
                p4 = routing.probabilities(dper, dinputs)[4]
                if variant == "one threshold":
                    auto = p4 >= routing.levels[4].threshold
                else:
                    auto = np.where(dhas, p4 >= by_kind[True], p4 >= by_kind[False])
                prec = ok[auto].mean() if auto.any() else float("nan")
                cells.append(
                    f"{name[:4]} ECE {expected_calibration_error(p4, ok):.3f} cov@95 "
                    f"{coverage_at_precision(p4, ok, 0.95)['coverage']:.3f} "
                    f"auto {auto.mean():.3f} at {prec:.3f}"
                )
            print(f"target {target} {variant:15s} " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "quick")
