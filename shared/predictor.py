"""The inference core: one `Predictor` used by the inference service, the workers, the CLI and the benchmarks.

    predictor = Predictor.load(model_dir, settings)
    predictor.predict([JobRecord(job_title="nurse")], PredictOptions(top_k=5)) -> list[Prediction]

Layers, from pure to heavy:
- `Hierarchy`, `level_probabilities`, `choose_level`, `build_predictions`: the decision logic, pure numpy
  over a probability matrix, testable without a model.
- `ProbabilityCache`: thread-safe LRU of model-input text -> unit-group probabilities (files repeat titles).
- `Predictor`: the model core's scorer (`shared.model.scorer`: torch fp32, torch int8 or ONNX Runtime behind
  one pipeline; default ONNX Runtime int8 on CPU, torch on CUDA, in every service), cache, decision logic.
- `PredictorHolder`: the current Predictor of a long-running process; polls the registry for a new best model
  and swaps it in atomically (requests in flight keep the Predictor they started with).

Over-long input: each field longer than `MAX_TEXT_CHARS` (the industry: `INDUSTRY_MAX_CHARS`) is cut to
that length and the result says `truncated=true`; the model itself reads at most `max_length` tokens
(model.json) of the joined text. The industry is part of the model input text, so of the cache key too.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, Field

from shared.model.signals import NearestMatch
from shared.routing import RoutingModel, record_inputs, review_reasons
from shared.schemas import (
    MAX_TEXT_CHARS,
    Alternative,
    GroupRef,
    JobRecord,
    Prediction,
    PredictOptions,
    Thresholds,
)
from shared.taxonomy import Taxonomy, get_taxonomy
from shared.text import INDUSTRY_MAX_CHARS, clean_text, model_input

log = logging.getLogger(__name__)


LEVELS_DEEPEST_FIRST = (4, 3, 2, 1)


# ----------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------


class PredictorConfig(BaseModel):
    """How a Predictor runs. Services expose these as settings fields of the same names (env ISCO_<NAME>)."""

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
        2, ge=0, description="int8: leading encoder layers whose FFN output projection stays fp32 (0: none)"
    )
    thresholds: Thresholds = Field(
        default_factory=lambda: Thresholds(), description="defaults when a request gives none"
    )

    @classmethod
    def from_settings(cls, settings: Any | None) -> PredictorConfig:
        """Take every field this config knows from a settings object (any object with such attributes)."""
        if settings is None:
            return cls()
        if isinstance(settings, PredictorConfig):
            return settings
        values = {name: getattr(settings, name) for name in cls.model_fields if hasattr(settings, name)}
        return cls(**{k: v for k, v in values.items() if v is not None})


# ----------------------------------------------------------------------------------------------------
# Pure decision logic
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hierarchy:
    """Maps the model's unit groups (label order) onto their minor, sub-major and major groups."""

    unit_codes: tuple[str, ...]
    group_codes: dict[int, tuple[str, ...]]  # level -> codes of that level, in column order
    indicators: dict[int, np.ndarray]  # level -> (n_units, n_groups) 0/1 matrix: unit i belongs to group j
    index: dict[int, dict[str, int]] = field(default_factory=dict)  # level -> code -> column

    @classmethod
    def from_codes(cls, unit_codes: Sequence[str], taxonomy: Taxonomy | None = None) -> Hierarchy:
        """Build from the unit codes in label order; codes unknown to the taxonomy are rejected."""
        taxonomy = taxonomy or get_taxonomy()
        unit_codes = tuple(unit_codes)
        group_codes: dict[int, tuple[str, ...]] = {4: unit_codes}
        indicators: dict[int, np.ndarray] = {4: np.eye(len(unit_codes), dtype=np.float32)}
        ancestors = {code: {g.level: g.code for g in taxonomy.ancestors(code)} for code in unit_codes}
        for level in (3, 2, 1):
            codes = tuple(sorted({ancestors[c][level] for c in unit_codes}))
            col = {c: j for j, c in enumerate(codes)}
            ind = np.zeros((len(unit_codes), len(codes)), dtype=np.float32)
            for i, unit in enumerate(unit_codes):
                ind[i, col[ancestors[unit][level]]] = 1.0
            group_codes[level], indicators[level] = codes, ind
        index = {level: {c: j for j, c in enumerate(codes)} for level, codes in group_codes.items()}
        return cls(unit_codes, group_codes, indicators, index)


def level_probabilities(unit_probs: np.ndarray, hierarchy: Hierarchy) -> dict[int, np.ndarray]:
    """Probabilities of every group at every level: unit probabilities summed up the hierarchy.

    Returns level -> array (n_records, n_groups_at_level); level 4 is `unit_probs` itself.
    """
    unit_probs = np.asarray(unit_probs, dtype=np.float32)
    return {
        level: unit_probs if level == 4 else unit_probs @ hierarchy.indicators[level]
        for level in (4, 3, 2, 1)
    }


@dataclass(frozen=True)
class LevelChoice:
    level: int
    code: str
    confidence: float


def choose_level(best_per_level: dict[int, tuple[str, float]], thresholds: Thresholds) -> LevelChoice | None:
    """The deepest level whose most likely group reaches that level's threshold (>=), or None.

    `best_per_level`: level -> (most likely code at that level, its probability). The unit threshold decides
    whether the answer falls back to the minor group, and so on up to the major group.
    """
    for level in LEVELS_DEEPEST_FIRST:
        code, confidence = best_per_level[level]
        if confidence >= thresholds.for_level(level):
            return LevelChoice(level, code, confidence)
    return None


def review_fields(
    choice: LevelChoice | None, record: JobRecord | None = None, routed_unit: bool | None = None
) -> dict[str, Any]:
    """`needs_review` and its reasons: only a 4-digit answer is auto-coded, only when the model's router says
    it is right with the fitted precision (`routed_unit`; None: no routing.json), and never an answer that is
    not an occupation or not in English (`shared.routing`)."""
    level = choice.level if choice is not None else None
    if level == 4 and routed_unit is False:
        level = 3  # a 4-digit answer below the router's threshold: reviewed like a fallback
    if record is None:
        reasons = ["not_coded"] if level is None else ["below_threshold"] if level < 4 else []
    else:
        reasons = review_reasons(record.job_title, record.duties_description, level)
    return {"needs_review": bool(reasons), "review_reasons": reasons}


def _conf(x: float) -> float:
    return round(float(x), 6)


def build_predictions(
    unit_probs: np.ndarray,
    hierarchy: Hierarchy,
    thresholds: Thresholds,
    top_k: int,
    model_version: str,
    *,
    ids: Sequence[str | None] | None = None,
    truncated: Sequence[bool] | None = None,
    taxonomy: Taxonomy | None = None,
    records: Sequence[JobRecord] | None = None,
    routing: RoutingModel | None = None,
    texts: Sequence[str] | None = None,
    nearest: NearestMatch | None = None,
) -> list[Prediction]:
    """Turn a (n_records, n_units) probability matrix into Predictions (pure: no model involved).

    The level answered is the deepest whose probability reaches its level's threshold. With `routing` (the
    model's routing.json) and the `records` and their model `texts`, `routing_confidence` is the router's
    calibrated probability that the 4-digit answer is right, and only answers at or above its fitted
    threshold, or that the record's `nearest` training text agrees with (the match rule), are auto-coded
    (`needs_review` false). With `records`, review reasons include non-occupation answers and non-English
    input.
    """
    taxonomy = taxonomy or get_taxonomy()
    n = unit_probs.shape[0]
    ids = ids if ids is not None else [None] * n
    truncated = truncated if truncated is not None else [False] * n
    per_level = level_probabilities(unit_probs, hierarchy)
    best_idx = {level: per_level[level].argmax(axis=1) for level in (4, 3, 2, 1)}
    routed = None
    if routing is not None and records is not None and texts is not None:
        inputs = record_inputs([r.job_title for r in records], [r.duties_description for r in records], texts)
        routed = routing.unit_routing(per_level, inputs, nearest)
    k = min(top_k, unit_probs.shape[1])
    # argpartition then sort only the k candidates: O(n_units) per row instead of a full sort
    top = np.argpartition(-per_level[4], k - 1, axis=1)[:, :k]
    results = []
    for r in range(n):
        best = {
            level: (
                hierarchy.group_codes[level][best_idx[level][r]],
                float(per_level[level][r, best_idx[level][r]]),
            )
            for level in (4, 3, 2, 1)
        }
        choice = choose_level(best, thresholds)
        routed_unit = bool(routed[1][r]) if routed is not None else None
        unit_code, unit_conf = best[4]
        # ties in label order, as argmax breaks them (argpartition's order differs between CPUs)
        row_top = sorted(top[r], key=lambda j: (-per_level[4][r, j], j))
        alternatives = [
            Alternative(
                code=hierarchy.unit_codes[j],
                title=taxonomy.title(hierarchy.unit_codes[j]),
                confidence=_conf(per_level[4][r, j]),
            )
            for j in row_top
        ]
        path = [
            GroupRef(
                code=g.code,
                level=g.level,
                title=g.title,
                confidence=_conf(per_level[g.level][r, hierarchy.index[g.level][g.code]]),
            )
            for g in taxonomy.ancestors(unit_code)
        ]
        results.append(
            Prediction(
                id=ids[r],
                coded=choice is not None,
                isco_code=choice.code if choice else None,
                level=choice.level if choice else None,
                title=taxonomy.title(choice.code) if choice else None,
                confidence=_conf(choice.confidence) if choice else None,
                is_fallback=choice is None or choice.level < 4,
                unit_code=unit_code,
                unit_title=taxonomy.title(unit_code),
                unit_confidence=_conf(unit_conf),
                alternatives=alternatives,
                path=path,
                model_version=model_version,
                truncated=bool(truncated[r]),
                routing_confidence=_conf(routed[0][r]) if routed is not None else None,
                **review_fields(choice, records[r] if records is not None else None, routed_unit),
            )
        )
    return results


def record_text(record: JobRecord, limit: int = MAX_TEXT_CHARS) -> tuple[str, bool]:
    """The model input for a record and whether a field had to be cut: the title or duties to `limit`
    characters, the industry to `INDUSTRY_MAX_CHARS` (cleaned, as `industry_phrase` reads it)."""
    title, duties = record.job_title or "", record.duties_description or ""
    industry = (record.industry or "")[:limit]  # bounds the cleaning work; industry_phrase cuts to its limit
    cut = (
        len(title) > limit
        or len(duties) > limit
        or len(record.industry or "") > limit
        or len(clean_text(industry).lower()) > INDUSTRY_MAX_CHARS
    )
    return model_input(title[:limit], duties[:limit], industry), cut


# ----------------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------------


# one scored text: its probability row (read-only, shared) and its nearest training text (label, similarity)
ScoredText = tuple[np.ndarray, tuple[int, float]]


class ProbabilityCache:
    """Thread-safe LRU: model-input text -> its scores (`ScoredText`)."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._data: OrderedDict[str, ScoredText] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def get_many(self, texts: Sequence[str]) -> dict[str, ScoredText]:
        found = {}
        with self._lock:
            for t in texts:
                row = self._data.get(t)
                if row is not None:
                    self._data.move_to_end(t)
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
                self._data.move_to_end(t)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)


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
                )
                if records
                else []
            )
            start = end
        return results


# ----------------------------------------------------------------------------------------------------
# Registry lookup and hot reload
# ----------------------------------------------------------------------------------------------------


def model_dir_version(model_dir: Path) -> str:
    """The version recorded in a model directory's model.json."""
    return str(json.loads((Path(model_dir) / "model.json").read_text()).get("version", "unknown"))


def resolve_model_dir(settings: Any) -> Path | None:
    """An explicitly configured `model_dir` wins; otherwise the registry's best model."""
    explicit = getattr(settings, "model_dir", None)
    if explicit:
        return Path(explicit)
    from shared.registry import best_model_dir

    return best_model_dir(settings)


class PredictorHolder:
    """The current Predictor of a long-running process, swapped atomically when the best model changes.

    Callers take `holder.current` once per request/chunk and use that object throughout, so a swap never
    changes the model under a request in flight; the old Predictor is freed when the last user drops it.
    """

    def __init__(
        self,
        settings: Any,
        *,
        loader: Callable[[Path, Any], Predictor] = Predictor.load,
        locate: Callable[[Any], Path | None] = resolve_model_dir,
    ):
        self.settings = settings
        self._loader = loader
        self._locate = locate
        self._current: Predictor | None = None
        self._current_dir: Path | None = None
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.listeners: list[Callable[[Predictor], None]] = []

    @property
    def current(self) -> Predictor | None:
        return self._current

    @property
    def ready(self) -> bool:
        return self._current is not None

    def set(self, predictor: Predictor, model_dir: Path | None = None) -> None:
        """Swap in a Predictor (a single reference assignment: atomic for readers)."""
        self._current, self._current_dir = predictor, model_dir or predictor.model_dir
        for listener in self.listeners:
            listener(predictor)

    def check(self) -> bool:
        """Load the best model if it differs from the current one; True when a new model was swapped in.

        Errors (registry unreachable, a broken model dir) are logged and kept in `last_error`; the current
        model keeps serving.
        """
        with self._reload_lock:
            try:
                model_dir = self._locate(self.settings)
                if model_dir is None:
                    return False
                model_dir = Path(model_dir)
                if self._current is not None and self._current_dir is not None:
                    same_dir = model_dir.resolve() == Path(self._current_dir).resolve()
                    if same_dir and model_dir_version(model_dir) == self._current.version:
                        return False
                predictor = self._loader(model_dir, self.settings)
            except Exception as exc:  # keep serving the old model; report on /ready and in logs
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("model reload failed")
                return False
            old = self._current.version if self._current else None
            self.set(predictor, model_dir)
            self.last_error = None
            log.info("model switched %s -> %s", old, predictor.version)
            return True

    def start_polling(self, interval_s: float) -> None:
        """Check the registry every `interval_s` seconds in a daemon thread (0 disables)."""
        if interval_s <= 0 or self._thread is not None:
            return

        def _loop() -> None:
            while not self._stop.wait(interval_s):
                self.check()

        self._thread = threading.Thread(target=_loop, name="predictor-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
