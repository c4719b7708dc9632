"""One fine-tuning experiment: corpus -> held-out corpus split -> finetune() -> dev-set metrics per signal.

python bench/experiments/run_finetune.py NAME '{"epochs": 1, ...}' [--sources a,b] [--val-frac 0.05]
Writes /tmp/exp/NAME/ (model dir) and /tmp/exp/NAME.json. Dev sets are only evaluated, never trained on.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from scipy.special import softmax

from bench.devsets import accepted_codes, load_devsets, topk_accuracy
from services.trainer.config import FinetuneConfig
from services.trainer.finetune import finetune
from shared.corpus import build_default_corpus, corpus_counts, label_codes
from shared.model.knn import KnnConfig, knn_probabilities
from shared.model.scorer import UnitScorer
from shared.model.signals import mix_probabilities
from shared.text import model_input

OUT = Path("/tmp/exp")


def split(records, val_frac, seed=0):
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(records))
    n_val = int(len(records) * val_frac)
    return [records[i] for i in idx[n_val:]], [records[i] for i in idx[:n_val]]


def occupation_split(records, val_frac, seed=0):
    """Hold out whole ESCO occupations (all their titles and descriptions): val mimics unseen titles."""
    from shared.corpus import load_esco_facts

    facts = load_esco_facts()
    rng = np.random.default_rng(seed)
    held = {i for i in rng.permutation(len(facts))[: int(len(facts) * val_frac)]}
    held_labels = {label.lower() for i in held for label in facts[i][2]}
    train, val = [], []
    for r in records:
        if r.source.startswith("esco") and r.job_title.lower() in held_labels:
            val.append(r)
        elif r.job_title.lower() in held_labels:
            continue  # the same title elsewhere would leak the held-out occupation
        else:
            train.append(r)
    return train, val


def dev_report(model_dir):
    scorer = UnitScorer.load(model_dir, backend="torch", quantize="none", device="cpu")
    codes = scorer.codes
    report = {}
    for name, dev in load_devsets().items():
        acc = accepted_codes(dev)
        emb = scorer.embed(dev.texts())
        logits = scorer.head_logits(emb)
        head = softmax(logits / scorer.temperature, axis=1)
        row = {"head": [round(topk_accuracy(head, acc, codes, k), 3) for k in (1, 3)]}
        if scorer.signals.knn is not None:
            for k in (10, 20):
                for tau in (0.02, 0.05):
                    kp = knn_probabilities(emb, scorer.signals.knn, KnnConfig(k=k, tau=tau), len(codes))
                    row[f"knn{k}/{tau}"] = round(topk_accuracy(kp, acc, codes), 3)
                    for w in (0.3, 0.5, 0.7):
                        row[f"mix{k}/{tau}/{w}"] = round(
                            topk_accuracy(mix_probabilities(head, [(kp, w)]), acc, codes), 3
                        )
        p = scorer.unit_probabilities(dev.texts())
        row["scorer"] = [round(topk_accuracy(p, acc, codes, k), 3) for k in (1, 3)]
        np.save(OUT / f"{Path(model_dir).name}_{name}_emb.npy", emb)
        np.save(OUT / f"{Path(model_dir).name}_{name}_logits.npy", logits)
        report[name] = row
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("config", default="{}")
    ap.add_argument("--sources", default=None)
    ap.add_argument("--val-frac", type=float, default=0.05)
    ap.add_argument("--corpus", default="{}")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--group-split", action="store_true", help="hold out whole ESCO occupations")
    a = ap.parse_args()
    recs = build_default_corpus(sources=a.sources.split(",") if a.sources else None, **json.loads(a.corpus))
    train, val = occupation_split(recs, a.val_frac) if a.group_split else split(recs, a.val_frac)
    if a.limit:
        train = train[: a.limit]
    print(corpus_counts(train), len(train), len(val), flush=True)
    config = FinetuneConfig(**json.loads(a.config))
    t = time.time()
    res = finetune(
        [model_input(r.job_title, r.duties_description) for r in train],
        [r.isco_code for r in train],
        [model_input(r.job_title, r.duties_description) for r in val],
        [r.isco_code for r in val],
        codes=label_codes(),
        config=config,
        output_dir=OUT / a.name,
        version=a.name,
    )
    res = res.model_dump()
    res["dev"] = dev_report(OUT / a.name)
    res["config"] = json.loads(a.config)
    res["corpus"] = json.loads(a.corpus)
    res["sources"] = a.sources
    (OUT / f"{a.name}.json").write_text(json.dumps(res, indent=1, default=float))
    print(json.dumps({k: v for k, v in res.items()}, indent=1, default=float))
