"""The kNN and lexical signals stored with a model, and the one function that mixes them with the head.

No torch here: every backend (torch fp32, torch int8, ONNX Runtime) hands its embeddings to the same numpy
code, so they differ only by the encoder's float error.

- kNN: the k training texts whose normalised embeddings are most similar to the query's vote for their unit
  group, weighted by softmax(similarity / tau). One dense float32 matmul per batch (BLAS) and argpartition.
- lexical: the same vote over character n-gram TF-IDF vectors (spelling variants, rare words the encoder
  blurs).

Mixing (`mix_probabilities`): (1 - sum w_i) * p_head + sum w_i * p_i. A mixture of calibrated distributions
stays calibrated. The weights are chosen once, by `search_weights` (training), and stored in model.json.
Which signals pay for their CPU time on the dev sets: `python -m bench.signals` (figures in its docstring).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from shared.model.rerank import Reranker

KNN_FILE = "knn.safetensors"
KNN_TEXTS_FILE = "knn_texts.json"
PRUNE_MIN_DF = 100
WEIGHT_GRID = tuple(round(0.05 * i, 2) for i in range(19))  # 0, 0.05, ..., 0.9


class KnnConfig(BaseModel):
    """How the kNN vote is computed and mixed with the head (model.json "knn")."""

    k: int = 10
    tau: float = 0.05
    weight: float = 0.0
    val_accuracy: float | None = None


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


def vote(top_labels: np.ndarray, top_sims: np.ndarray, tau: float, num_labels: int) -> np.ndarray:
    """Similarity-weighted vote of each row's neighbours as a distribution over labels.

    Neighbours with similarity <= 0 do not vote; a row without any voter gets the uniform distribution.
    """
    n, k = top_labels.shape
    weights = np.exp((top_sims - top_sims.max(axis=1, keepdims=True)) / tau)
    weights[top_sims <= 0] = 0.0
    flat = (np.arange(n)[:, None] * num_labels + top_labels).ravel()
    out = np.bincount(flat, weights.ravel(), minlength=n * num_labels).reshape(n, num_labels)
    sums = out.sum(axis=1, keepdims=True)
    empty = sums[:, 0] <= 0
    out = (out / np.clip(sums, 1e-12, None)).astype(np.float32)
    out[empty] = 1.0 / num_labels
    return out


def best_similarity(top_labels: np.ndarray, top_sims: np.ndarray, num_labels: int) -> np.ndarray:
    """(n, num_labels): each label's highest similarity among a row's neighbours (0 where none is near)."""
    n = len(top_labels)
    out = np.zeros(n * num_labels, dtype=np.float32)
    np.maximum.at(out, (np.arange(n)[:, None] * num_labels + top_labels).ravel(), top_sims.ravel())
    return out.reshape(n, num_labels)


def top_k(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of each row's k largest entries, largest first."""
    k = max(1, min(k, sims.shape[1]))
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(sims, top, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(vals, order, axis=1)


class KnnIndex:
    """Normalised training-text embeddings (float32 in memory, float16 on disk), label ids and the texts.

    The texts (knn_texts.json) are the evidence a reviewer sees (`nearest`); models written before they were
    stored load without them.
    """

    def __init__(self, embeddings: np.ndarray, labels: np.ndarray, texts: list[str] | None = None):
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.texts = texts
        if texts is not None and len(texts) != len(self.labels):
            raise ValueError(f"{len(texts)} texts for {len(self.labels)} kNN entries")
        self._int8: Int8Similarity | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def save(self, model_dir: Path) -> None:
        from safetensors.numpy import save_file

        save_file(
            {"embeddings": self.embeddings.astype(np.float16), "labels": self.labels.astype(np.int32)},
            str(Path(model_dir) / KNN_FILE),
        )
        if self.texts is not None:
            (Path(model_dir) / KNN_TEXTS_FILE).write_text(json.dumps(self.texts, ensure_ascii=False))

    @classmethod
    def load(cls, model_dir: Path) -> KnnIndex:
        from safetensors.numpy import load_file

        tensors = load_file(str(Path(model_dir) / KNN_FILE))
        texts_path = Path(model_dir) / KNN_TEXTS_FILE
        texts = json.loads(texts_path.read_text()) if texts_path.exists() else None
        return cls(tensors["embeddings"], tensors["labels"], texts)

    def extended(self, embeddings: np.ndarray, labels: np.ndarray, texts: list[str]) -> KnnIndex:
        """This index followed by new entries."""
        return KnnIndex(
            np.concatenate([self.embeddings, embeddings]),
            np.concatenate([self.labels, labels]),
            self.texts + list(texts) if self.texts is not None else None,
        )

    def search(self, query: np.ndarray, k: int, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """(entry ids, cosine similarities) of each query's k nearest entries, nearest first (int8
        similarities, see `Int8Similarity`)."""
        if self._int8 is None:
            self._int8 = Int8Similarity(self.embeddings)
        ids = np.zeros((len(query), min(k, len(self))), dtype=np.int64)
        sims = np.zeros(ids.shape, dtype=np.float32)
        for start in range(0, len(query), block):  # bounds the (block x entries) similarity matrix
            ids[start : start + block], sims[start : start + block] = self._int8.nearest(
                query[start : start + block], k
            )
        return ids, sims


ENTRY_MAX = 63  # entries quantised to -63..63, queries to 0..255 (see Int8Similarity)


class Int8Similarity:
    """The k most similar index entries of each query: cosine similarities with queries and entries quantised
    to int8 with one scale per row, multiplied as integers (MatMulInteger), scaled per entry and ranked
    (TopK) in one ONNX Runtime graph.

    One record against the float32 index is a memory-bound pass over entries x 384 floats (25,000 entries:
    38 MB, measured 12 ms under load); int8 reads a quarter of that and runs integer kernels. Ranking inside
    the graph spares numpy a float copy of the (queries x entries) matrix, two scaling passes and an
    argpartition per row: on 50,649 entries and the 2,500 dev-set queries, one record 1.02 -> 0.38 ms and
    0.92 -> 0.11 ms per record in batches, the same neighbours. With 7-bit entries (below), on the registered
    model's 50,003 entries: error <= 0.004 in similarity (mean 0.0007), 99.4% of the top-10 neighbours the
    same as float32. Per-row scales (not one per call) keep each query's answer
    independent of its batch-mates; the query's own scale is positive, so it is applied to the k values only.
    Entries take 7 bits (-63..63): x86 CPUs without VNNI (AVX2 only, e.g. AMD Zen 3) multiply uint8 by
    int8 in pairs summed into int16 (vpmaddubsw), which saturates above 32,767; 255 x 63 x 2 stays below
    it, 255 x 127 x 2 does not (an identical vector scored 0.39 instead of 1.0 there).
    """

    def __init__(self, embeddings: np.ndarray):
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        from shared.model.resources import cpu_share

        scale = (np.abs(embeddings).max(axis=1) / ENTRY_MAX).astype(np.float32)
        entries = np.round(embeddings / np.maximum(scale, 1e-12)[:, None]).astype(np.int8)
        dim, n = embeddings.shape[1], embeddings.shape[0]
        graph = helper.make_graph(
            [
                helper.make_node("MatMulInteger", ["query", "entries", "zero"], ["dot"]),
                helper.make_node("Cast", ["dot"], ["dot_f"], to=TensorProto.FLOAT),
                helper.make_node("Mul", ["dot_f", "entry_scale"], ["scaled"]),
                helper.make_node("TopK", ["scaled", "k"], ["values", "ids"], axis=-1, largest=1, sorted=1),
            ],
            "knn",
            [
                helper.make_tensor_value_info("query", TensorProto.UINT8, ["n", dim]),
                helper.make_tensor_value_info("k", TensorProto.INT64, [1]),
            ],
            [
                helper.make_tensor_value_info("values", TensorProto.FLOAT, ["n", "k"]),
                helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", "k"]),
            ],
            initializer=[
                numpy_helper.from_array(np.ascontiguousarray(entries.T), "entries"),
                numpy_helper.from_array(np.array(128, dtype=np.uint8), "zero"),
                numpy_helper.from_array(scale, "entry_scale"),
            ],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = cpu_share()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self.entries = n

    def nearest(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(entry ids, approximate cosine similarities) of the k nearest entries of each normalised query
        embedding, nearest first."""
        query = np.asarray(query, dtype=np.float32)
        scale = np.maximum(np.abs(query).max(axis=1) / 127.0, 1e-12).astype(np.float32)
        quantised = (np.round(query / scale[:, None]) + 128).astype(np.uint8)
        k = max(1, min(k, self.entries))
        values, ids = self.session.run(["values", "ids"], {"query": quantised, "k": np.array([k], np.int64)})
        return ids, values * scale[:, None]


def knn_probabilities(query: np.ndarray, index: KnnIndex, config: KnnConfig, num_labels: int) -> np.ndarray:
    """The kNN vote for normalised query embeddings."""
    ids, sims = index.search(np.asarray(query, dtype=np.float32), config.k)
    return vote(index.labels[ids], sims, config.tau, num_labels)


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


def extend_indexes(
    knn: KnnIndex | None,
    lexical: LexicalIndex | None,
    texts: list[str],
    embeddings: np.ndarray,
    labels: np.ndarray,
) -> tuple[KnnIndex | None, LexicalIndex | None, int]:
    """Both indexes (those present) with the labelled records `texts` added, and how many were added: texts
    the kNN index already holds are skipped (a corrections run keeps its parent's entries, which may hold
    the same validation and test records)."""
    known = set(knn.texts) if knn is not None and knn.texts is not None else set()
    new = np.array([t not in known for t in texts], dtype=bool)
    texts = [t for t, n in zip(texts, new, strict=True) if n]
    if not texts:
        return knn, lexical, 0
    embeddings, labels = embeddings[new], np.asarray(labels)[new]
    if knn is not None:
        knn = knn.extended(embeddings, labels, texts)
    if lexical is not None:
        lexical = lexical.extended(np.arange(len(lexical.labels)), lexical.labels, texts, labels)
    return knn, lexical, len(texts)


def mix_probabilities(head_probs: np.ndarray, parts: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """(1 - sum w) * head + sum w_i * p_i: the one way signals are combined."""
    total = sum(w for _, w in parts)
    if total >= 1.0:
        raise ValueError(f"signal weights sum to {total}, must be < 1")
    out = (1.0 - total) * head_probs
    for probs, weight in parts:
        if weight > 0:
            out = out + weight * probs
    return out.astype(np.float32, copy=False)


@dataclass(frozen=True)
class NearestMatch:
    """Each record's nearest training text in the kNN index: its unit group (label id; -1 where the model
    has no kNN signal) and its cosine similarity. Routing auto-codes an answer that a coded text this near
    agrees with (`shared.routing.RoutingModel.match_similarity`), as statistical offices auto-code answers
    that match an already coded one."""

    labels: np.ndarray  # (n,) int64
    similarity: np.ndarray  # (n,) float32

    @classmethod
    def none(cls, n: int) -> NearestMatch:
        return cls(np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.float32))

    @classmethod
    def from_best_similarity(cls, best: np.ndarray) -> NearestMatch:
        """From each label's best similarity among a record's neighbours (`best_similarity`)."""
        labels = best.argmax(axis=1).astype(np.int64)
        similarity = best[np.arange(len(best)), labels].astype(np.float32)
        return cls(np.where(similarity > 0, labels, -1), similarity)

    @classmethod
    def stack(cls, rows: Sequence[tuple[int, float]]) -> NearestMatch:
        """From (label, similarity) pairs, one per record."""
        return cls(
            np.array([r[0] for r in rows], dtype=np.int64).reshape(-1),
            np.array([r[1] for r in rows], dtype=np.float32).reshape(-1),
        )

    def row(self, i: int) -> tuple[int, float]:
        return int(self.labels[i]), float(self.similarity[i])

    def take(self, rows: Sequence[int] | np.ndarray) -> NearestMatch:
        rows = np.asarray(rows, dtype=np.int64)
        return NearestMatch(self.labels[rows], self.similarity[rows])


class Signals:
    """The kNN and lexical signals of one model, their weights (absent or weight 0: not computed) and the
    optional second stage that reranks the mixed probabilities (`shared.model.rerank`)."""

    def __init__(
        self,
        codes: Sequence[str],
        knn: KnnIndex | None = None,
        knn_config: KnnConfig | None = None,
        lexical: LexicalIndex | None = None,
        lexical_config: LexicalConfig | None = None,
        reranker: Reranker | None = None,
    ):
        self.codes = list(codes)
        self.num_labels = len(self.codes)
        self.knn, self.knn_config = knn, knn_config
        self.lexical, self.lexical_config = lexical, lexical_config
        self.reranker = reranker

    @classmethod
    def load(cls, model_dir: Path, meta: dict[str, Any], codes: Sequence[str]) -> Signals:
        """The signals model.json names and the model directory holds."""
        model_dir = Path(model_dir)
        knn = knn_config = lexical = lexical_config = None
        if (model_dir / KNN_FILE).exists():
            knn = KnnIndex.load(model_dir)
            knn_config = KnnConfig(**meta["knn"]) if meta.get("knn") else None
        if (model_dir / "lexical.json").exists() and meta.get("lexical"):
            lexical_config = LexicalConfig(**meta["lexical"])
            # models stored with every n-gram are pruned here (a no-op for indexes built pruned)
            lexical = LexicalIndex.load(model_dir, lexical_config).pruned(lexical_config)
        return cls(codes, knn, knn_config, lexical, lexical_config, Reranker.load(model_dir))

    @property
    def uses_knn(self) -> bool:
        return self.knn is not None and self.knn_config is not None and self.knn_config.weight > 0

    @property
    def uses_lexical(self) -> bool:
        return self.lexical is not None and self.lexical_config is not None and self.lexical_config.weight > 0

    def describe(self) -> dict[str, Any]:
        """The signals in use with their weights and index sizes, and the reranker (logs, benchmarks)."""
        out: dict[str, Any] = {}
        if self.uses_knn:
            assert self.knn is not None and self.knn_config is not None
            out["knn"] = {"weight": self.knn_config.weight, "k": self.knn_config.k, "entries": len(self.knn)}
        if self.uses_lexical:
            assert self.lexical is not None and self.lexical_config is not None
            out["lexical"] = {
                "weight": self.lexical_config.weight,
                "k": self.lexical_config.k,
                "entries": len(self.lexical),
            }
        if self.reranker is not None:
            out["rerank"] = {"k": self.reranker.k}
        return out

    def probabilities(self, texts: list[str], embeddings: np.ndarray) -> dict[str, np.ndarray]:
        """Each signal in use ("knn", "lexical"): its probabilities over the unit groups, and each unit
        group's best similarity among the signal's neighbours ("knn_similarity", "lexical_similarity")."""
        out: dict[str, np.ndarray] = {}
        if self.uses_knn and len(texts):
            assert self.knn is not None and self.knn_config is not None
            ids, sims = self.knn.search(np.asarray(embeddings, dtype=np.float32), self.knn_config.k)
            labels = self.knn.labels[ids]
            out["knn"] = vote(labels, sims, self.knn_config.tau, self.num_labels)
            out["knn_similarity"] = best_similarity(labels, sims, self.num_labels)
        if self.uses_lexical and len(texts):
            assert self.lexical is not None and self.lexical_config is not None
            ids, sims = self.lexical.nearest(texts, self.lexical_config.k)
            labels = self.lexical.labels[ids]
            out["lexical"] = vote(labels, sims, self.lexical_config.tau, self.num_labels)
            out["lexical_similarity"] = best_similarity(labels, sims, self.num_labels)
        return out

    def weights(self) -> dict[str, float]:
        """The mixing weight of each signal in use."""
        out: dict[str, float] = {}
        if self.uses_knn:
            assert self.knn_config is not None
            out["knn"] = self.knn_config.weight
        if self.uses_lexical:
            assert self.lexical_config is not None
            out["lexical"] = self.lexical_config.weight
        return out

    def first_stage(
        self, texts: list[str], embeddings: np.ndarray, head_probs: np.ndarray
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The head's calibrated probabilities mixed with the signals in use, and each signal's own
        probabilities ("head" and those in use): what the reranker reads."""
        parts = self.probabilities(texts, embeddings)
        weights = self.weights()
        mixed = mix_probabilities(head_probs, [(parts[name], weights[name]) for name in weights])
        return mixed, {"head": head_probs, **parts}

    def mix(self, texts: list[str], embeddings: np.ndarray, head_probs: np.ndarray) -> np.ndarray:
        """The model's probabilities over the unit groups: the first stage, then the reranker when the model
        has one."""
        return self.score(texts, embeddings, head_probs)[0]

    def score(
        self, texts: list[str], embeddings: np.ndarray, head_probs: np.ndarray
    ) -> tuple[np.ndarray, NearestMatch]:
        """`mix`, and each text's nearest kNN training text (from the same search)."""
        mixed, parts = self.first_stage(texts, embeddings, head_probs)
        best = parts.get("knn_similarity")
        nearest = NearestMatch.none(len(texts)) if best is None else NearestMatch.from_best_similarity(best)
        if self.reranker is not None and len(texts):
            mixed = self.reranker.rerank(self.codes, mixed, parts)
        return mixed, nearest

    def nearest(self, embeddings: np.ndarray, codes: list[str], k: int) -> list[list[tuple[str, str, float]]]:
        """(training text, its unit code, cosine similarity) of each query's k nearest kNN entries."""
        if self.knn is None or self.knn.texts is None or not len(self.knn) or k <= 0:
            return [[] for _ in range(len(embeddings))]
        ids, sims = self.knn.search(embeddings, k)
        texts, labels = self.knn.texts, self.knn.labels
        return [
            [(texts[j], codes[labels[j]], round(float(s), 6)) for j, s in zip(row, row_sims, strict=True)]
            for row, row_sims in zip(ids, sims, strict=True)
        ]


@dataclass(frozen=True)
class WeightChoice:
    """The signal weights (and vote temperatures) `search_weights` chose, and their validation scores."""

    weights: dict[str, float]
    taus: dict[str, float]
    val_accuracy: float
    val_nll: float


def search_weights(
    head_probs: np.ndarray,
    candidates: dict[str, dict[float, np.ndarray]],
    labels: np.ndarray,
    fixed: dict[str, float | None],
    grid: tuple[float, ...] = WEIGHT_GRID,
) -> WeightChoice:
    """Joint search over each signal's weight (unless fixed) and vote temperature (its candidates' keys):
    the highest validation accuracy, ties to the lower log loss. The weights sum to less than 0.95."""
    names = list(candidates)
    options = [
        [
            (w, tau)
            for w in ([fixed[name]] if fixed.get(name) is not None else grid)
            for tau in candidates[name]
        ]
        for name in names
    ]
    rows = np.arange(len(labels))
    best: tuple[float, float, dict[str, float], dict[str, float]] | None = None
    for combo in itertools.product(*options):
        weights = [float(w) for w, _ in combo]  # type: ignore[arg-type]
        if sum(weights) >= 0.95:
            continue
        parts = [(candidates[n][tau], w) for n, (_, tau), w in zip(names, combo, weights, strict=True)]
        p = mix_probabilities(head_probs, parts)
        acc = round(float((p.argmax(1) == labels).mean()), 4) if len(labels) else 0.0
        nll = float(-np.log(np.clip(p[rows, labels], 1e-12, None)).mean()) if len(labels) else 0.0
        if best is None or (acc, -nll) > (best[0], -best[1]):
            best = (
                acc,
                nll,
                dict(zip(names, weights, strict=True)),
                {n: t for n, (_, t) in zip(names, combo, strict=True)},
            )
    assert best is not None
    return WeightChoice(weights=best[2], taus=best[3], val_accuracy=best[0], val_nll=best[1])
