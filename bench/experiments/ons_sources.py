"""How the ONS coding index joins ESCO: each choice measured with the TF-IDF + linear SVM peer (2 minutes a
fit, no encoder), on the dev sets and on the held-out ONS entries coded in an industry.

Variants (every one de-duplicated per text as `services.trainer.preprocess` does, then split as training
splits; the SVM trains on the training split only and is scored on the test split's ONS entries with their
industry, and on the dev sets):
    esco_only        the corpus before the index (ESCO, ISCO-08 texts)
    ons_wins         + the index; one text coded two ways keeps the index's code (the default)
    esco_wins        + the index; ESCO's code wins instead
    no_industry      + the index, its industry dropped (each entry read as its title alone)
    industry_duties  + the index, the industry written into the duties ("works in paper mfr"), not beside the
                     title

Usage: python -m bench.experiments.ons_sources [--variants a,b]   (writes bench/results/ons_sources-*.json)
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from datetime import UTC, datetime

from bench.accuracy import RESULTS_DIR, _softmax
from bench.baseline_svm import SvmBaseline
from bench.devsets import load_devsets, topk_accuracy
from services.trainer import preprocess
from services.trainer.pipeline import eval_set_from_examples
from services.trainer.records import rows_from_corpus
from shared.corpus import CodedRecord, build_default_corpus, label_codes

VARIANTS = ("esco_only", "ons_wins", "esco_wins", "no_industry", "industry_duties")
ONS = ("ons_title", "ons_industry")


def corpus(variant: str) -> list[CodedRecord]:
    records = build_default_corpus()
    if variant == "esco_only":
        return [r for r in records if r.source not in ONS]
    if variant == "no_industry":
        return [replace(r, industry="") if r.source in ONS else r for r in records]
    if variant == "industry_duties":
        return [
            replace(r, industry="", duties_description=f"works in {r.industry}") if r.industry else r
            for r in records
        ]
    return records


def run(variant: str) -> dict[str, float]:
    original = dict(preprocess.SOURCE_PRIORITY)
    try:
        if variant == "esco_wins":
            preprocess.SOURCE_PRIORITY.update(dict.fromkeys(ONS, preprocess.DEFAULT_PRIORITY))
        return _measure(variant)
    finally:
        preprocess.SOURCE_PRIORITY.clear()
        preprocess.SOURCE_PRIORITY.update(original)


def _measure(variant: str) -> dict[str, float]:
    config = preprocess.PreprocessConfig(val_fraction=0.05, test_fraction=0.05, val_known_titles=0.05)
    config.outliers.enabled = False
    prepared = preprocess.prepare(rows_from_corpus(corpus(variant)), config)
    train = prepared.train + prepared.val  # the model indexes validation too
    t = time.perf_counter()
    svm = SvmBaseline().fit([e.text for e in train], [e.code for e in train])
    out: dict[str, float] = {"fit_seconds": round(time.perf_counter() - t, 1)}
    codes = label_codes()
    for name, dev in load_devsets().items():
        scores = svm.scores(dev.texts(), codes)
        accept = [{g} | a for g, a in zip(dev.gold, dev.accept, strict=True)]
        out[f"{name} top-1"] = round(topk_accuracy(scores, accept, codes, 1), 4)
        out[f"{name} top-3"] = round(topk_accuracy(scores, accept, codes, 3), 4)
    held = [e for e in prepared.test if e.source == "ons_industry"]
    if held:
        test = eval_set_from_examples("ons_industry", held)
        probs = _softmax(svm.scores(test.texts(), codes))
        out["test ons_industry top-1"] = round(topk_accuracy(probs, [{g} for g in test.gold], codes, 1), 4)
    out["conflicts"] = len(prepared.conflicts)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    results = {}
    for variant in args.variants.split(","):
        results[variant] = run(variant)
        print(variant, results[variant], flush=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"ons_sources-{stamp}.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
