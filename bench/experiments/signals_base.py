"""Compare untrained signals on cached base embeddings: prototypes, kNN over corpus texts, and mixtures."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from shared.corpus import build_default_corpus, label_codes
from shared.model.knn import KnnConfig, KnnIndex, knn_probabilities

DEV = Path(__file__).resolve().parents[3] / "shared" / "data" / "devsets"
X = Path("/tmp/exp")


def dev(name):
    with (DEV / name).open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [set(r["accept"].split("|")) for r in rows]


def acc(p, accept, codes, k=1):
    top = np.argsort(-p, 1)[:, :k]
    return float(np.mean([any(codes[j] in a for j in t) for t, a in zip(top, accept, strict=True)]))


if __name__ == "__main__":
    tag = "base"
    codes = label_codes()
    pos = {c: i for i, c in enumerate(codes)}
    recs = build_default_corpus()
    y = np.array([pos[r.isco_code] for r in recs])
    src = np.array([r.source for r in recs])
    E = np.load(X / f"{tag}_corpus.npy")
    devs = {
        "ilo": (np.load(X / f"{tag}_ilo_.npy"), dev("ilo_titles_dev.csv")),
        "onet": (np.load(X / f"{tag}_onet.npy"), dev("onet_jobs_dev.csv")),
    }
    proto = np.zeros((len(codes), E.shape[1]), np.float32)
    np.add.at(proto, y, E)
    proto /= np.linalg.norm(proto, axis=1, keepdims=True) + 1e-9
    for name, (Q, accept) in devs.items():
        pp = Q @ proto.T
        ph = np.exp((pp - pp.max(1, keepdims=True)) * 30)
        ph /= ph.sum(1, keepdims=True)
        print(name, "proto", acc(ph, accept, codes), acc(ph, accept, codes, 3))
        for subset in ("all", "titles"):
            mask = (
                np.ones(len(y), bool)
                if subset == "all"
                else np.isin(src, ["esco_title", "isco_title", "isco_example", "isco_related"])
            )
            idx = KnnIndex(E[mask], y[mask])
            for k in (5, 10, 20):
                for tau in (0.02, 0.05):
                    pk = knn_probabilities(Q, idx, KnnConfig(k=k, tau=tau), len(codes))
                    mix = [round(acc(0.5 * ph + 0.5 * pk, accept, codes), 3)]
                    print(
                        name,
                        subset,
                        k,
                        tau,
                        "knn",
                        round(acc(pk, accept, codes), 3),
                        round(acc(pk, accept, codes, 3), 3),
                        "mix.5",
                        mix,
                    )
