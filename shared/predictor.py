"""The inference core: one `Predictor` used by the inference service, the workers, the CLI and the benchmarks.

    predictor = Predictor.load(model_dir, settings)
    predictor.predict([JobRecord(job_title="nurse")], PredictOptions(top_k=5)) -> list[Prediction]

- `PredictorConfig`: how a Predictor runs; the inference service's and the workers' settings inherit it.
- `ProbabilityCache`: thread-safe LRU of model-input text -> unit-group probabilities (files repeat titles).
- `Predictor`: the model core's scorer (`shared.model.scorer`: torch fp32, torch int8 or ONNX Runtime behind
  one pipeline; default ONNX Runtime int8 on CPU, torch on CUDA, in every service), the cache, and the
  decision layer (`shared.decision`).

Which model a long-running process holds, and when it changes, is `shared.holder`.

Over-long input: each field longer than `MAX_TEXT_CHARS` (the industry: `INDUSTRY_MAX_CHARS`) is cut to
that length and the result says `truncated=true`; the model itself reads at most `max_length` tokens
(model.json) of the joined text. The industry is part of the model input text, so of the cache key too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from cachetools import LRUCache
from pydantic import BaseModel, Field

from shared.decision import Hierarchy, build_predictions, record_text
from shared.language import DEFAULT_MODEL_LANGUAGES
from shared.model.directory import read_model_languages
from shared.model.int8 import INT8_FP32_LAYERS
from shared.model.signals import NearestMatch
from shared.routing import RoutingModel
from shared.schemas import JobRecord, Prediction, PredictOptions, Thresholds
from shared.taxonomy import get_taxonomy

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------


class PredictorConfig(BaseModel):
    """How a Predictor runs: declared once here; the inference service's and the workers' settings inherit
    these fields (env ISCO_<NAME>), a worker overriding a default where files want another."""

    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    backend: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="auto: torch on CUDA, else ONNX Runtime (CPU); the same default in every service"
    )
    quantize: Literal["none", "int8"] = Field(
        "int8", description="int8 on CPU: ONNX Runtime static (batched), torch dynamic (one record per call)"
    )
    torch_threads: int | None = Field(
        None, ge=1, description="intra-op threads; default: this process's CPU share"
    )
    batch_size: int = Field(32, ge=1, le=4096, description="texts per forward pass (sorted by token length)")
    cache_size: int = Field(20_000, ge=0, description="LRU entries of text -> probabilities; 0 disables")
    int8_fp32_layers: int = Field(
        INT8_FP32_LAYERS,
        ge=0,
        description="int8: leading encoder layers whose FFN output projection stays fp32 (0: none)",
    )
    thresholds: Thresholds = Field(
        default_factory=lambda: Thresholds(), description="defaults when a request gives none"
    )

    @classmethod
    def from_settings(cls, settings: Any | None) -> PredictorConfig:
        """Take every field this config knows from a settings object (any object with such attributes)."""
        if settings is None:
            return cls()
        if type(settings) is cls:
            return settings
        values = {name: getattr(settings, name) for name in cls.model_fields if hasattr(settings, name)}
        return cls(**{k: v for k, v in values.items() if v is not None})


# ----------------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------------


# one scored text: its probability row (read-only, shared) and its nearest training text (label, similarity)
ScoredText = tuple[np.ndarray, tuple[int, float]]


class ProbabilityCache:
    """Thread-safe LRU (`cachetools.LRUCache`): model-input text -> its scores (`ScoredText`), with hit and
    miss counts for the service's metrics. `max_entries` 0 disables it."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._data: LRUCache[str, ScoredText] = LRUCache(maxsize=max(1, max_entries))
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def get_many(self, texts: Sequence[str]) -> dict[str, ScoredText]:
        found = {}
        with self._lock:
            for t in texts:
                row = self._data.get(t)  # a hit becomes the most recently used
                if row is not None:
                    found[t] = row
            self.hits += len(found)
            self.misses += len(texts) - len(found)
        return found

    def put_many(self, items: dict[str, ScoredText]) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            for t, scored in items.items():
                scored[0].flags.writeable = False
                self._data[t] = scored


# ----------------------------------------------------------------------------------------------------
# Scorer (shared.model.scorer.UnitScorer; torch and onnxruntime are imported lazily)
# ----------------------------------------------------------------------------------------------------


class Scorer(Protocol):
    codes: list[str]
    version: str

    def unit_scores(
        self, texts: list[str], batch_size: int | None = None
    ) -> tuple[np.ndarray, NearestMatch]: ...


def load_scorer(model_dir: Path, config: PredictorConfig) -> Any:
    """The model core's scorer on the backend the config asks for (see shared.model.encoders)."""
    from shared.model.scorer import UnitScorer

    return UnitScorer.load(
        model_dir,
        backend=config.backend,
        device=config.device,
        quantize=config.quantize,
        threads=config.torch_threads,
        int8_fp32_layers=config.int8_fp32_layers,
        batch_size=config.batch_size,
    )


# ----------------------------------------------------------------------------------------------------
# Predictor
# ----------------------------------------------------------------------------------------------------


class Predictor:
    """Model, label maps, ISCO metadata, cache and decision logic. Thread-safe."""

    def __init__(self, scorer: Scorer, config: PredictorConfig | None = None, model_dir: Path | None = None):
        self.scorer = scorer
        self.config = config or PredictorConfig()
        self.model_dir = model_dir
        self.taxonomy = get_taxonomy()
        self.hierarchy = Hierarchy.from_codes(scorer.codes, self.taxonomy)
        self.cache = ProbabilityCache(self.config.cache_size)
        # routing.json: calibrated per-level routers and thresholds fitted for a target precision
        self.routing = RoutingModel.load(model_dir) if model_dir is not None else None
        # model.json "languages": a record in another language or script goes to a coder
        self.languages = read_model_languages(model_dir) if model_dir is not None else DEFAULT_MODEL_LANGUAGES

    @classmethod
    def load(cls, model_dir: str | Path, settings: Any | None = None) -> Predictor:
        """Load a model directory; `settings`: any object with PredictorConfig fields (None: defaults)."""
        config = PredictorConfig.from_settings(settings)
        model_dir = Path(model_dir)
        started = time.perf_counter()
        scorer = load_scorer(model_dir, config)
        predictor = cls(scorer, config, model_dir)
        describe = getattr(scorer, "describe", dict)
        log.info("loaded model from %s in %.1fs: %s", model_dir, time.perf_counter() - started, describe())
        return predictor

    @property
    def version(self) -> str:
        return self.scorer.version

    @property
    def codes(self) -> list[str]:
        return list(self.scorer.codes)

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """Calibrated unit-group probabilities (len(texts), len(codes)); repeated texts are scored once."""
        return self.scores(texts)[0]

    def scores(self, texts: Sequence[str]) -> tuple[np.ndarray, NearestMatch]:
        """`probabilities`, and each text's nearest training text (routing's match rule reads it)."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self.scorer.codes)), dtype=np.float32), NearestMatch.none(0)
        unique = list(dict.fromkeys(texts))
        known = self.cache.get_many(unique) if self.config.cache_size > 0 else {}
        missing = [t for t in unique if t not in known]
        if missing:
            probs, nearest = self.scorer.unit_scores(missing, batch_size=self.config.batch_size)
            # copies: a cached row must not keep its whole batch matrix alive
            fresh = {t: (probs[i].copy(), nearest.row(i)) for i, t in enumerate(missing)}
            self.cache.put_many(fresh)
            known.update(fresh)
        return np.stack([known[t][0] for t in texts]), NearestMatch.stack([known[t][1] for t in texts])

    def nearest_examples(self, texts: Sequence[str], k: int = 5) -> list[list[tuple[str, str, float]]]:
        """Evidence for reviewers: per text, the k most similar training texts stored with the model's kNN
        index, as (training text, its unit code, cosine similarity), most similar first. Not cached; call it
        on request only (one encoder pass)."""
        nearest = getattr(self.scorer, "nearest_examples", None)
        return nearest(list(texts), k) if nearest is not None else [[] for _ in texts]

    def predict(
        self, records: Sequence[JobRecord], options: PredictOptions | None = None
    ) -> list[Prediction]:
        """Code each record: the deepest level clearing its threshold, alternatives, path, titles, version."""
        return self.predict_groups([(records, options)])[0]

    def predict_groups(
        self, groups: Sequence[tuple[Sequence[JobRecord], PredictOptions | None]]
    ) -> list[list[Prediction]]:
        """Several requests (each with its own options) scored in one forward pass (micro-batching)."""
        texts: list[str] = []
        truncated: list[bool] = []
        for records, _ in groups:
            for record in records:
                text, cut = record_text(record)
                texts.append(text)
                truncated.append(cut)
        probs, nearest = self.scores(texts)
        results: list[list[Prediction]] = []
        start = 0
        for records, options in groups:
            options = options or PredictOptions()
            end = start + len(records)
            thresholds = options.thresholds or self.config.thresholds
            routing = self.routing
            results.append(
                build_predictions(
                    probs[start:end],
                    self.hierarchy,
                    thresholds,
                    options.top_k,
                    self.version,
                    ids=[r.id for r in records],
                    truncated=truncated[start:end],
                    taxonomy=self.taxonomy,
                    records=records,
                    routing=routing,
                    texts=texts[start:end],
                    nearest=nearest.take(range(start, end)),
                    languages=self.languages,
                )
                if records
                else []
            )
            start = end
        return results
