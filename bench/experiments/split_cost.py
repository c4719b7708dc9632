"""How much does holding out whole occupations cost on the dev sets?

Frozen head + kNN trained on the occupation split, a record split and all records, and the occupation split
with the held-out records added to the kNN index only. python -m bench.experiments.split_cost
"""

import numpy as np

from bench.experiments.exp_common import knn_probs, load_context, prototypes, softmax, topk, train_head

ctx = load_context("base")
y, E, codes = ctx["y"], ctx["corpus"], ctx["codes"]
n = len(codes)
rng = np.random.default_rng(0)
rec_train = np.flatnonzero(rng.random(len(y)) >= 0.1)
for name, tr in (
    ("occupation split (10% occupations out)", ctx["train"]),
    ("record split (10% records out)", rec_train),
    ("all records", np.arange(len(y))),
):
    W, s = train_head(E[tr], y[tr], prototypes(E[tr], y[tr], n), epochs=8)
    cells = []
    for k, (q, acc) in ctx["dev"].items():
        p = 0.8 * softmax(s * q @ W.T / 1.2) + 0.2 * knn_probs(q, E[tr], y[tr], n)
        cells.append(f"{k} {topk(p, acc, codes):.3f}/{topk(p, acc, codes, 3):.3f}")
    print(f"{name:42s} n={len(tr)} " + "  ".join(cells), flush=True)

# the held-out occupations added to the kNN index only (after everything was chosen on them)
tr, everything = ctx["train"], np.arange(len(y))
W, s = train_head(E[tr], y[tr], prototypes(E[tr], y[tr], n), epochs=8)
for wk in (0.2, 0.3):
    cells = []
    for k, (q, acc) in ctx["dev"].items():
        p = (1 - wk) * softmax(s * q @ W.T / 1.2) + wk * knn_probs(q, E[everything], y[everything], n)
        cells.append(f"{k} {topk(p, acc, codes):.3f}/{topk(p, acc, codes, 3):.3f}")
    print(f"{'occupation split, kNN over all, w=' + str(wk):42s} " + "  ".join(cells), flush=True)
