"""Does a lexical signal add to the embedding signals? TF-IDF kNN / centroid over the corpus, mixed with the
base-embedding prototype + kNN mix (cached by encode_base.py). Dev sets evaluated only."""

from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from bench.devsets import accepted_codes, load_devsets, topk_accuracy
from shared.corpus import build_default_corpus, label_codes
from shared.model.knn import KnnConfig, KnnIndex, knn_probabilities
from shared.text import model_input

X = "/tmp/exp"


def sparse_knn(S, y, n, k=10, tau=0.05):
    S = S.toarray() if hasattr(S, "toarray") else S
    out = np.zeros((S.shape[0], n), np.float32)
    top = np.argpartition(-S, k - 1, axis=1)[:, :k]
    ts = np.take_along_axis(S, top, 1)
    w = np.exp((ts - ts.max(1, keepdims=True)) / tau)
    np.add.at(out, (np.repeat(np.arange(len(top)), k), y[top].ravel()), w.ravel())
    return out / out.sum(1, keepdims=True)


if __name__ == "__main__":
    codes = label_codes()
    pos = {c: i for i, c in enumerate(codes)}
    recs = build_default_corpus()
    texts = [model_input(r.job_title, r.duties_description) for r in recs]
    y = np.array([pos[r.isco_code] for r in recs])
    E = np.load(f"{X}/base_corpus.npy")
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, min_df=2)
    T = vec.fit_transform(texts)
    proto = np.zeros((len(codes), E.shape[1]), np.float32)
    np.add.at(proto, y, E)
    proto /= np.linalg.norm(proto, axis=1, keepdims=True) + 1e-9
    idx = KnnIndex(E, y)
    for (name, dev), tag in zip(load_devsets().items(), ("ilo_", "onet"), strict=True):
        acc = accepted_codes(dev)
        Q = np.load(f"{X}/base_{tag}.npy")
        pp = Q @ proto.T
        ph = np.exp((pp - pp.max(1, keepdims=True)) * 30)
        ph /= ph.sum(1, keepdims=True)
        pk = knn_probabilities(Q, idx, KnnConfig(k=10, tau=0.05), len(codes))
        emb = 0.5 * ph + 0.5 * pk
        Tq = vec.transform(dev.texts())
        res = {"emb": round(topk_accuracy(emb, acc, codes), 3)}
        S = (Tq @ T.T).toarray()
        for k in (10, 30):
            pt = sparse_knn(S, y, len(codes), k=k, tau=0.05)
            res[f"tfidf{k}"] = round(topk_accuracy(pt, acc, codes), 3)
            for w in (0.2, 0.35, 0.5):
                res[f"emb+tfidf{k}@{w}"] = round(topk_accuracy((1 - w) * emb + w * pt, acc, codes), 3)
        print(name, res, flush=True)
