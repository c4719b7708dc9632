"""Choose the signal weights (kNN, lexical) on held-out ESCO occupations, never on the dev sets.

python bench/experiments/choose_weights.py /tmp/exp/e5   (a model trained by run_finetune.py --group-split)
Rebuilds the same occupation split, scores the held-out records with head, kNN and lexical signals, searches
the weights for top-1 accuracy there, and only then reports the dev sets for the chosen weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.special import softmax

from bench.devsets import accepted_codes, load_devsets, topk_accuracy
from bench.experiments.run_finetune import occupation_split
from shared.corpus import build_default_corpus
from shared.model.knn import KnnConfig, knn_probabilities
from shared.model.lexical import LexicalConfig, LexicalIndex
from shared.model.scorer import UnitScorer
from shared.model.signals import mix_probabilities
from shared.text import model_input


def signals(scorer, lexical, texts):
    emb = scorer.embed(texts)
    logits = scorer.head_logits(emb)
    head = softmax(logits / scorer.temperature, axis=1)
    out = {"head": head}
    for tau in (0.02, 0.05, 0.1):
        out[f"knn{tau}"] = knn_probabilities(
            emb, scorer.signals.knn, KnnConfig(k=10, tau=tau), len(scorer.codes)
        )
    out["lex"] = lexical.probabilities(texts, LexicalConfig(), len(scorer.codes))
    return out


if __name__ == "__main__":
    model_dir = Path(sys.argv[1])
    scorer = UnitScorer.load(model_dir, backend="torch", quantize="none", device="cpu")
    codes = scorer.codes
    pos = {c: i for i, c in enumerate(codes)}
    train, val = occupation_split(build_default_corpus(), 0.05)
    lexical = LexicalIndex.build(
        [model_input(r.job_title, r.duties_description) for r in train],
        [pos[r.isco_code] for r in train],
        LexicalConfig(),
    )
    val_texts = [model_input(r.job_title, r.duties_description) for r in val]
    val_accept = [{r.isco_code} for r in val]
    sv = signals(scorer, lexical, val_texts)
    grid = []
    nll_grid = []
    y = np.array([pos[r.isco_code] for r in val])
    for tau in (0.02, 0.05, 0.1):
        for wk in np.arange(0, 0.65, 0.05):
            for wl in np.arange(0, 0.5, 0.05):
                if wk + wl >= 0.95:
                    continue
                p = mix_probabilities(sv["head"], [(sv[f"knn{tau}"], wk), (sv["lex"], wl)])
                grid.append((topk_accuracy(p, val_accept, codes), tau, round(wk, 2), round(wl, 2)))
                nll = float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())
                nll_grid.append((round(nll, 4), tau, round(wk, 2), round(wl, 2), grid[-1][0]))
    grid.sort(reverse=True)
    nll_grid.sort()
    print("held-out occupations, lowest log loss:", nll_grid[:5])
    criterion = sys.argv[2] if len(sys.argv) > 2 else "nll"
    print(
        "held-out occupations: head", round(topk_accuracy(sv["head"], val_accept, codes), 4), "best", grid[:5]
    )
    _, tau, wk, wl = grid[0] if criterion == "accuracy" else nll_grid[0][:4]
    for name, dev in load_devsets().items():
        acc = accepted_codes(dev)
        sd = signals(scorer, lexical, dev.texts())
        p = mix_probabilities(sd["head"], [(sd[f"knn{tau}"], wk), (sd["lex"], wl)])
        print(
            name,
            "head",
            round(topk_accuracy(sd["head"], acc, codes), 3),
            "chosen",
            (tau, wk, wl),
            [round(topk_accuracy(p, acc, codes, k), 3) for k in (1, 3, 5)],
            flush=True,
        )
