"""Head trained on frozen base embeddings (cached): does it beat prototypes, and with kNN / TF-IDF?"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bench.devsets import accepted_codes, load_devsets, topk_accuracy
from shared.corpus import build_default_corpus, label_codes
from shared.model.knn import KnnConfig, KnnIndex, knn_probabilities

X = "/tmp/exp"


def train_head(E, y, n, init, scale=30.0, epochs=60, lr=5e-3, wd=0.0, ls=0.0):
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.tensor(init).clone())
    s = torch.nn.Parameter(torch.tensor(scale))
    opt = torch.optim.Adam([W, s], lr=lr, weight_decay=wd)
    Et, yt = torch.tensor(E), torch.tensor(y)
    for _ in range(epochs):
        perm = torch.randperm(len(yt))
        for b in range(0, len(yt), 1024):
            i = perm[b : b + 1024]
            logits = s * Et[i] @ F.normalize(W, dim=-1).T
            loss = F.cross_entropy(logits, yt[i], label_smoothing=ls)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return F.normalize(W, dim=-1).detach().numpy(), float(s)


def sm(z):
    z = z - z.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    codes = label_codes()
    pos = {c: i for i, c in enumerate(codes)}
    recs = build_default_corpus()
    y = np.array([pos[r.isco_code] for r in recs])
    E = np.load(f"{X}/base_corpus.npy")
    proto = np.zeros((len(codes), E.shape[1]), np.float32)
    np.add.at(proto, y, E)
    proto /= np.linalg.norm(proto, axis=1, keepdims=True) + 1e-9
    tags = ("ilo_", "onet")
    items = zip(load_devsets().items(), tags, strict=True)
    devs = [(n, d, np.load(f"{X}/base_{t}.npy")) for (n, d), t in items]
    idx = KnnIndex(E, y)
    for cfg in [dict(epochs=5), dict(epochs=20), dict(epochs=20, ls=0.1), dict(epochs=60)]:
        W, s = train_head(E, y, len(codes), proto, **cfg)
        out = {}
        for name, dev, Q in devs:
            acc = accepted_codes(dev)
            ph = sm(s * Q @ W.T)
            pk = knn_probabilities(Q, idx, KnnConfig(k=10, tau=0.05), len(codes))
            out[name[:4]] = [round(topk_accuracy(ph, acc, codes), 3)] + [
                round(topk_accuracy((1 - w) * ph + w * pk, acc, codes), 3) for w in (0.3, 0.5)
            ]
        print(cfg, round(s, 1), out, flush=True)
