"""Routing features (issue 10): does signal agreement make the correctness probability sharper?

    python -m bench.experiments.exp_routing [TAG]     (needs var/cache/<TAG>_signals.npz from exp_frozen)

Fits the routers on one half of the held-out ESCO occupations' records and reports on the other half
(coverage at 95% precision, ECE), then fits on all of them and applies the 95% threshold to the dev sets:
auto-coded share and its precision. Variants: the shipped features (shared.routing.FEATURES) with and without
agreement between the head, kNN and lexical signals.
"""

from __future__ import annotations

import sys

import numpy as np

from bench.devsets import accepted_codes, load_devsets
from bench.experiments.cache_views import CACHE
from bench.experiments.exp_common import topk
from services.trainer.metrics import coverage_at_precision, expected_calibration_error
from services.trainer.routing_fit import fit_logistic, threshold_for_precision
from shared.corpus import label_codes
from shared.routing import RecordInputs, routing_features


def agreement(head, knn, lex):
    top = head.argmax(1)
    rows = np.arange(len(top))
    return np.c_[
        knn.argmax(1) == top,
        lex.argmax(1) == top,
        knn[rows, top],
        lex[rows, top],
    ].astype(np.float64)


def main(tag: str = "base") -> None:
    z = np.load(CACHE / f"{tag}_signals.npz")
    wk, wl = z["weights"]
    codes = label_codes()
    devs = load_devsets()
    parts = {}
    for part in ("val", "ilo", "onet"):
        head, knn, lex = z[f"{part}_head"], z[f"{part}_knn"], z[f"{part}_lex"]
        fused = (1 - wk - wl) * head + wk * knn + wl * lex
        parts[part] = (fused, head, knn, lex)
    y = z["val_y"]
    fused = parts["val"][0]
    correct_v = fused.argmax(1) == y
    has_v, words_v = z["val_has_duties"], z["val_words"]
    dev_inputs = {
        "ilo": (devs["ilo_titles_dev"], np.zeros(len(parts["ilo"][0]), bool)),
        "onet": (devs["onet_jobs_dev"], np.ones(len(parts["onet"][0]), bool)),
    }
    rng = np.random.default_rng(0)
    half = rng.permutation(len(y)) < len(y) // 2
    print(f"val top-1 {correct_v.mean():.3f} (n={len(y)})")
    for variant in ("shipped", "+agreement"):

        def feats(part, has, words, variant=variant):
            f, h, k, lx = parts[part]
            x = routing_features(f, RecordInputs(has, words, np.zeros(len(words), bool)))
            return np.c_[x, agreement(h, k, lx)] if variant == "+agreement" else x

        xv = feats("val", has_v, words_v)
        mean, std, w, b = fit_logistic(xv[half], correct_v[half])
        pv = 1 / (1 + np.exp(-(((xv[~half] - mean) / std) @ w + b)))
        c = correct_v[~half]
        line = [
            f"{variant:11s} val(other half): ECE {expected_calibration_error(pv, c):.3f} "
            f"cov@95 {coverage_at_precision(pv, c, 0.95)['coverage']:.3f} "
            f"cov@90 {coverage_at_precision(pv, c, 0.90)['coverage']:.3f}"
        ]
        mean, std, w, b = fit_logistic(xv, correct_v)
        pall = 1 / (1 + np.exp(-(((xv - mean) / std) @ w + b)))
        t = threshold_for_precision(pall, correct_v, 0.95)
        for name, (dev, has) in dev_inputs.items():
            words = np.array([len(tx.split()) for tx in dev.texts()])
            x = feats(name, has, words)
            p = 1 / (1 + np.exp(-(((x - mean) / std) @ w + b)))
            acc = accepted_codes(dev)
            f = parts[name][0]
            correct = np.array([codes[j] in a for j, a in zip(f.argmax(1), acc, strict=True)])
            auto = p >= t
            line.append(
                f"{name}: top1 {topk(f, acc, codes):.3f} ECE {expected_calibration_error(p, correct):.3f} "
                f"cov@95 {coverage_at_precision(p, correct, 0.95)['coverage']:.3f} auto {auto.mean():.3f}@"
                f"{correct[auto].mean() if auto.any() else float('nan'):.3f}"
            )
        print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "base")
