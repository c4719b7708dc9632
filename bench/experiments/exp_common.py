"""Shared pieces of the coding-quality experiments (issue 10): occupation split, cached views, metrics.

Everything is chosen on held-out ESCO occupations (`occupation_split`, whole occupations: all their titles and
descriptions); the dev sets are only scored, and only with what the held-out split chose.
Embeddings come from var/cache (bench/experiments/cache_views.py, or an experiment's own encoder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.devsets import accepted_codes, load_devsets
from bench.experiments.cache_views import CACHE
from shared.corpus import CodedRecord, build_default_corpus, label_codes, load_esco_facts


def occupation_split(
    records: list[CodedRecord], val_frac: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): whole ESCO occupations held out; their titles elsewhere leave train too."""
    facts = load_esco_facts()
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(len(facts))[: int(len(facts) * val_frac)].tolist())
    held_labels = {label.lower() for i in held for label in facts[i][2]}
    train, val = [], []
    for i, r in enumerate(records):
        title = r.job_title.lower()
        if r.source.startswith("esco") and title in held_labels:
            val.append(i)
        elif title not in held_labels:
            train.append(i)
    return np.array(train), np.array(val)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def knn_probs(q: np.ndarray, index: np.ndarray, labels: np.ndarray, n: int, k: int = 10, tau: float = 0.05):
    out = np.zeros((len(q), n), dtype=np.float32)
    for s in range(0, len(q), 512):
        sims = q[s : s + 512] @ index.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        ts = np.take_along_axis(sims, top, axis=1)
        w = np.exp((ts - ts.max(axis=1, keepdims=True)) / tau)
        rows = np.repeat(np.arange(len(top)), k)
        np.add.at(out[s : s + 512], (rows, labels[top].ravel()), w.ravel())
    return out / np.clip(out.sum(axis=1, keepdims=True), 1e-12, None)


def prototypes(emb: np.ndarray, y: np.ndarray, n: int) -> np.ndarray:
    proto = np.zeros((n, emb.shape[1]), np.float32)
    np.add.at(proto, y, emb)
    return proto / (np.linalg.norm(proto, axis=1, keepdims=True) + 1e-9)


def train_head(emb, y, init, scale=30.0, epochs=10, lr=5e-3, batch=1024, seed=0):
    """Cosine head on frozen embeddings (from prototypes), cross-entropy; returns (W normalised, scale)."""
    torch.manual_seed(seed)
    w = torch.nn.Parameter(torch.tensor(init).clone())
    s = torch.nn.Parameter(torch.tensor(float(scale)))
    opt = torch.optim.Adam([w, s], lr=lr)
    et, yt = torch.tensor(emb), torch.tensor(y)
    for _ in range(epochs):
        perm = torch.randperm(len(yt))
        for b in range(0, len(yt), batch):
            i = perm[b : b + batch]
            loss = F.cross_entropy(s * et[i] @ F.normalize(w, dim=-1).T, yt[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return F.normalize(w, dim=-1).detach().numpy(), float(s)


def topk(p: np.ndarray, accept: list[set[str]], codes: list[str], k: int = 1) -> float:
    top = np.argsort(-p, axis=1)[:, :k]
    return float(np.mean([any(codes[j] in a for j in row) for row, a in zip(top, accept, strict=True)]))


def load_context(tag: str = "base") -> dict:
    """Corpus records, label ids, cached embeddings of every view, the occupation split, dev sets."""
    codes = label_codes()
    pos = {c: i for i, c in enumerate(codes)}
    records = build_default_corpus()
    y = np.array([pos[r.isco_code] for r in records])
    train, val = occupation_split(records)
    devs = load_devsets()
    ctx = {
        "codes": codes,
        "records": records,
        "y": y,
        "train": train,
        "val": val,
        "corpus": np.load(CACHE / f"{tag}_corpus.npy"),
        "dev": {
            "ilo": (np.load(CACHE / f"{tag}_ilo.npy"), accepted_codes(devs["ilo_titles_dev"])),
            "onet": (np.load(CACHE / f"{tag}_onet.npy"), accepted_codes(devs["onet_jobs_dev"])),
        },
        "onet_title": np.load(CACHE / f"{tag}_onet_title.npy"),
        "onet_duties": np.load(CACHE / f"{tag}_onet_duties.npy"),
    }
    return ctx


def held_out_signals(scorer: Any, model_dir: Path) -> tuple[Any, np.ndarray]:
    """A trained model's signals without validation's entries (as training's stages saw them: the pipeline
    indexes validation after choosing on it), and validation's positions in the model's kNN index."""
    from shared.model.knn import KnnIndex
    from shared.model.lexical import LexicalIndex
    from shared.model.signals import Signals

    stats = json.loads((model_dir / "metrics.json").read_text())["training"]["preprocess"]
    n_train, n_val = stats["train"], stats["val"]
    knn, lexical = scorer.signals.knn, scorer.signals.lexical
    assert knn is not None and knn.texts is not None and lexical is not None
    val = np.arange(n_train, n_train + n_val)
    keep = np.setdiff1d(np.arange(len(knn)), val)
    signals = Signals(
        scorer.codes,
        KnnIndex(knn.embeddings[keep], knn.labels[keep], [knn.texts[i] for i in keep]),
        scorer.signals.knn_config,
        LexicalIndex(lexical.vectorizer, lexical.matrix[keep], lexical.labels[keep]),
        scorer.signals.lexical_config,
        scorer.signals.reranker,
    )
    return signals, val
