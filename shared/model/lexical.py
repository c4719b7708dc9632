"""The lexical signal: the kNN vote (`shared.model.knn.vote`) over character n-gram TF-IDF vectors of the
training texts, for spelling variants and rare words the encoder blurs.

Stored without pickles: the vocabulary and idf as lexical.json, the sparse matrix as lexical.npz and the
labels as lexical_labels.npy. Mixing with the head: `shared.model.signals`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from shared.model.knn import top_k, vote

PRUNE_MIN_DF = 100


class LexicalConfig(BaseModel):
    """The lexical (TF-IDF kNN) vote and its mixing weight (model.json "lexical")."""

    k: int = 10
    tau: float = 0.05
    weight: float = 0.0
    ngram_min: int = 2
    ngram_max: int = 4
    min_df: int = 2
    # n-grams in more than this share of the training texts are dropped (their idf is low, but their posting
    # lists are most of the sparse product's work); 1.0 keeps all. Training stores its own value (profiles:
    # 0.01, a fifteenth of the cost of all n-grams; 0.05: a fifth; top-1 within 0.2 point: `bench.signals`);
    # this default prunes, at load, models stored with every n-gram before the setting existed
    max_df: float = 0.05
    val_accuracy: float | None = None


class LexicalIndex:
    """Character n-gram (within word boundaries) TF-IDF vectors of training texts, L2-normalised, with labels.

    Stored without pickles: the vocabulary and idf as JSON, the sparse matrix and labels as .npz/.npy.
    """

    def __init__(self, vectorizer: Any, matrix: Any, labels: np.ndarray):
        self.vectorizer = vectorizer
        self.matrix = matrix.tocsr().astype(np.float32)
        self.matrix_t = self.matrix.T.tocsr()  # inverted index: n-gram -> (entry, weight) postings
        self.labels = np.asarray(labels, dtype=np.int64)
        self.idf = np.asarray(vectorizer.idf_, dtype=np.float32)
        self._analyzer = vectorizer.build_analyzer()

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def _vectorizer(config: LexicalConfig, vocabulary: dict[str, int] | None = None) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer

        return TfidfVectorizer(
            analyzer="char_wb",
            ngram_range=(config.ngram_min, config.ngram_max),
            sublinear_tf=True,
            min_df=1 if vocabulary else config.min_df,
            vocabulary=vocabulary,
            dtype=np.float32,
        )

    @classmethod
    def build(cls, texts: list[str], labels: list[int] | np.ndarray, config: LexicalConfig) -> LexicalIndex:
        vectorizer = cls._vectorizer(config)
        matrix = vectorizer.fit_transform(texts)
        return cls(vectorizer, matrix, np.asarray(labels)).pruned(config)

    def pruned(self, config: LexicalConfig) -> LexicalIndex:
        """Without the n-grams in more than `config.max_df` of the entries (and more than PRUNE_MIN_DF);
        rows re-normalised."""
        if config.max_df >= 1.0 or not len(self):
            return self
        from sklearn.preprocessing import normalize

        df = np.diff(self.matrix.tocsc().indptr)
        # a posting list of under PRUNE_MIN_DF entries is cheap: small (user) corpora keep every n-gram
        keep = np.flatnonzero(df <= max(config.max_df * len(self), PRUNE_MIN_DF))
        terms = sorted(self.vectorizer.vocabulary_.items(), key=lambda item: item[1])
        vocabulary = {terms[j][0]: i for i, j in enumerate(keep)}
        vectorizer = self._vectorizer(config, vocabulary)
        vectorizer._validate_vocabulary()
        vectorizer.idf_ = np.asarray(self.vectorizer.idf_[keep], dtype=np.float32)
        matrix = normalize(self.matrix[:, keep].tocsr())
        return LexicalIndex(vectorizer, matrix, self.labels)

    def extended(
        self, keep: np.ndarray, labels: np.ndarray, texts: list[str], new_labels: Any
    ) -> LexicalIndex:
        """The entries `keep` (relabelled `labels`) followed by `texts`, vectorised with this vocabulary."""
        from scipy.sparse import vstack

        matrix = vstack([self.matrix[keep], self.vectorizer.transform(texts)])
        return LexicalIndex(self.vectorizer, matrix, np.concatenate([labels, np.asarray(new_labels)]))

    def save(self, model_dir: Path) -> None:
        from scipy.sparse import save_npz

        vocabulary = {term: int(i) for term, i in self.vectorizer.vocabulary_.items()}
        idf = [float(x) for x in self.vectorizer.idf_]
        (Path(model_dir) / "lexical.json").write_text(json.dumps({"vocabulary": vocabulary, "idf": idf}))
        save_npz(Path(model_dir) / "lexical.npz", self.matrix, compressed=True)
        np.save(Path(model_dir) / "lexical_labels.npy", self.labels.astype(np.int32))

    @classmethod
    def load(cls, model_dir: Path, config: LexicalConfig) -> LexicalIndex:
        from scipy.sparse import load_npz

        model_dir = Path(model_dir)
        data = json.loads((model_dir / "lexical.json").read_text())
        vectorizer = cls._vectorizer(config, data["vocabulary"])
        vectorizer._validate_vocabulary()
        vectorizer.idf_ = np.asarray(data["idf"], dtype=np.float32)
        labels = np.load(model_dir / "lexical_labels.npy")
        return cls(vectorizer, load_npz(model_dir / "lexical.npz"), labels)

    def query_vector(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """The text's TF-IDF vector as (n-gram ids, weights): the arithmetic of the vectorizer's `transform`
        (sublinear tf x idf, L2-normalised) without its per-call input validation, which cost more than the
        arithmetic for one record."""
        vocabulary = self.vectorizer.vocabulary_
        found = [vocabulary[g] for g in self._analyzer(text) if g in vocabulary]
        if not found:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        ids, counts = np.unique(np.asarray(found, dtype=np.int64), return_counts=True)
        # float32 throughout, like the vectorizer (dtype float32), so the vectors are the same to the bit
        weights = (np.log(counts.astype(np.float32)) + np.float32(1.0)) * self.idf[ids]
        return ids, weights / np.sqrt(np.dot(weights, weights))

    def query_matrix(self, texts: list[str]) -> Any:
        """The texts' TF-IDF vectors as one sparse matrix (len(texts), n-grams)."""
        from scipy.sparse import csr_matrix

        vectors = [self.query_vector(t) for t in texts]
        indptr = np.concatenate([[0], np.cumsum([len(ids) for ids, _ in vectors])])
        ids = np.concatenate([ids for ids, _ in vectors]) if vectors else np.zeros(0, dtype=np.int64)
        weights = np.concatenate([w for _, w in vectors]) if vectors else np.zeros(0, dtype=np.float32)
        return csr_matrix((weights, ids, indptr), shape=(len(texts), self.matrix_t.shape[0]))

    def probabilities(self, texts: list[str], config: LexicalConfig, num_labels: int) -> np.ndarray:
        """Similarity-weighted vote of the k lexically nearest training texts."""
        ids, sims = self.nearest(texts, config.k)
        return vote(self.labels[ids], sims, config.tau, num_labels)

    def nearest(self, texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Entry ids and cosine similarities of each text's k lexically nearest entries (similarity 0 pads
        rows with fewer matches)."""
        ids = np.zeros((len(texts), k), dtype=np.int64)
        sims = np.zeros((len(texts), k), dtype=np.float32)
        for start in range(0, len(texts), 256):
            # sparse product with the inverted index: the work is the query n-grams' posting lists; top-k
            # from each row's non-zeros (no dense rows over every entry)
            product = (self.query_matrix(texts[start : start + 256]) @ self.matrix_t).tocsr()
            for row in range(product.shape[0]):
                lo, hi = product.indptr[row], product.indptr[row + 1]
                if hi == lo:
                    continue
                row_ids, row_sims = top_k(product.data[None, lo:hi], k)
                n = row_ids.shape[1]
                ids[start + row, :n] = product.indices[lo:hi][row_ids[0]]
                sims[start + row, :n] = row_sims[0]
        return ids, sims
