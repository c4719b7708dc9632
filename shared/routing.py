"""Routing: which answers are safe to auto-code. Records never auto-coded whatever the model says (not an
occupation, not English) and the reasons a record goes to a coder are `shared.screening`.

Pure numpy (no torch): the Predictor and the trainer import it.

- `RoutingModel`: a calibrated probability that the answer at each level is right, from score features
  (top probability, margin, entropy, whether duties or an industry were given, input length), fitted as a
  small logistic regression per level on held-out records; per-level thresholds chosen for a target precision
  (default 0.95), one per record shape (`RecordInputs.shapes`: a title alone, a title with its industry,
  a record with duties) where validation has enough of that shape, and one per language other than English
  (a record must clear both); and a match rule: an answer that the
  record's nearest training text (kNN, cosine similarity at or above a level fitted for the same precision,
  per shape too) agrees with is auto-coded too. Fitted by the trainer (services/trainer/routing_fit.py), saved
  in the model directory as `routing.json`, loaded by the Predictor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, Field

from shared.model.artifact import JsonArtifact
from shared.model.signals import NearestMatch
from shared.text import INDUSTRY_MARK, TITLE_SEPARATOR

ROUTING_FILE = "routing.json"
DEFAULT_TARGET_PRECISION = 0.95
LEVELS = (4, 3, 2, 1)

# ----------------------------------------------------------------------------------------------------
# Calibrated probability of being right, per level
# ----------------------------------------------------------------------------------------------------

FEATURES = (
    "log_top1", "top1", "margin", "log_ratio", "entropy",
    "has_duties", "log_words", "has_industry", "non_english",
)  # fmt: skip

# What a record shows, which the router's precision depends on: survey-style titles read with their industry
# are coded differently (and less surely) than a title alone or a record with duties, so each shape gets the
# threshold that reaches the target precision on its own validation records (services/trainer/routing_fit.py).
SHAPES = ("title", "industry", "duties")
# A multilingual model codes its other languages less surely than English (RESULTS-issue28.md): each language
# other than English gets its own threshold where validation has enough of its records, the others the
# threshold of all non-English records together (`POOLED_LANGUAGES`). A record whose language is only guessed
# ("?", `shared.screening.UNSURE_LANGUAGE`) is held to the pooled one (a "?" entry, in models trained for a
# while with one, is honoured).
ENGLISH = "en"
POOLED_LANGUAGES = "*"


@dataclass(frozen=True)
class RecordInputs:
    """What each record gave, as the router reads it (arrays of one value per record)."""

    has_duties: np.ndarray
    n_words: np.ndarray  # words of the model input
    has_industry: np.ndarray
    # the language routing holds each record to (`shared.screening.routing_languages`: its language, or "?"
    # when only guessed); None: all English (a one-language model)
    languages: np.ndarray | None = None

    @classmethod
    def from_texts(cls, texts: Sequence[str], languages: Sequence[str] | None = None) -> RecordInputs:
        """From model inputs alone (`shared.text.model_input`), as training and evaluation see records."""
        return cls(
            has_duties=np.array([TITLE_SEPARATOR in t for t in texts], dtype=bool),
            n_words=np.array([len(t.split()) for t in texts], dtype=np.int64),
            has_industry=_has_industry(texts),
            languages=np.asarray(languages, dtype=object) if languages is not None else None,
        )

    def language_codes(self) -> np.ndarray:
        """Each record's language (ISO 639-1), English where none was read."""
        if self.languages is None:
            return np.full(len(self), ENGLISH, dtype=object)
        return self.languages

    def __len__(self) -> int:
        return len(self.n_words)

    def shapes(self) -> np.ndarray:
        """Each record's shape (`SHAPES`): duties given (with or without industry), else a title with its
        industry, else a title alone."""
        return np.where(self.has_duties, "duties", np.where(self.has_industry, "industry", "title"))


def _has_industry(texts: Sequence[str]) -> np.ndarray:
    return np.array([f"({INDUSTRY_MARK}" in t for t in texts], dtype=bool)


def routing_features(level_probs: np.ndarray, inputs: RecordInputs) -> np.ndarray:
    """Score features of each record at one level: (n, len(FEATURES)).

    `level_probs`: (n, n_groups) probabilities at that level; `inputs`: what each record gave.
    """
    p = np.clip(np.asarray(level_probs, dtype=np.float64), 1e-12, 1.0)
    part = -np.partition(-p, 1, axis=1)[:, :2] if p.shape[1] > 1 else np.c_[p, np.zeros(len(p))]
    top1, top2 = part[:, 0], np.maximum(part[:, 1], 1e-12)
    entropy = -(p * np.log(p)).sum(axis=1)
    return np.c_[
        np.log(top1),
        top1,
        top1 - top2,
        np.log(top1) - np.log(top2),
        entropy,
        np.asarray(inputs.has_duties, dtype=np.float64),
        np.log1p(np.asarray(inputs.n_words, dtype=np.float64)),
        np.asarray(inputs.has_industry, dtype=np.float64),
        (inputs.language_codes() != ENGLISH).astype(np.float64),
    ]


def match_features(similarity: ArrayLike) -> np.ndarray:
    """(n, 1): -log(1 - cosine similarity), which spreads out the near-duplicates where precision climbs
    (a lower validation log loss than the similarity itself)."""
    return -np.log(1.001 - np.clip(np.asarray(similarity, dtype=np.float64), -1.0, 1.0))[:, None]


class LevelRouter(BaseModel):
    """Logistic regression on standardised features -> P(the level's top group is right), and a threshold."""

    mean: list[float]
    std: list[float]
    coef: list[float]
    intercept: float
    threshold: float = Field(
        1.0,
        description="auto-accept at this level when the probability is >= this (shapes without their own)",
    )
    shape_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="the threshold of each record shape (`RecordInputs.shapes`) with enough fitting records "
        "(above 1: that shape never reaches the target precision, nothing of it is auto-coded)",
    )
    language_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="the threshold of each language other than English with enough fitting records, and "
        f"'{POOLED_LANGUAGES}' for the other non-English languages, applied on top of the shape's (a record "
        "clears both); English records have only their shape's",
    )
    fitted_precision: float | None = Field(
        None, description="precision at the threshold on the fitting split"
    )
    fitted_coverage: float | None = Field(None, description="share at or above the threshold on that split")
    kind_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="the threshold each kind of fitting record (its training source) alone would need for "
        "the target precision (above 1: none reaches it); reported, not applied "
        "(services/trainer/routing_fit.py)",
    )

    def probability(self, features: np.ndarray) -> np.ndarray:
        z = (np.asarray(features, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.std)
        return _sigmoid(z @ np.asarray(self.coef) + self.intercept)

    def thresholds_for(self, shapes: np.ndarray, languages: np.ndarray | None = None) -> np.ndarray:
        """Each record's threshold: its shape's, else the one fitted on all records; for a record in another
        language than English, at least its language's (`language_thresholds`)."""
        by_shape = np.array([self.shape_thresholds.get(s, self.threshold) for s in shapes], dtype=np.float64)
        return at_least_language(by_shape, self.language_thresholds, languages)


class RoutingModel(JsonArtifact):
    """Per-level routers and the target precision they were fitted for (routing.json in a model directory)."""

    file_name: ClassVar[str] = ROUTING_FILE
    target_precision: float = DEFAULT_TARGET_PRECISION
    bound_z: float = Field(
        0.0, description="the target held on the precision's lower bound this many SEs down"
    )
    features: list[str] = Field(default_factory=lambda: list(FEATURES))
    levels: dict[int, LevelRouter]
    fitted_on: str = Field("", description="what the routers were fitted on (held-out ESCO occupations)")
    n_fitted: int = 0
    match_similarity: float | None = Field(
        None,
        description="the match rule: a 4-digit answer is also auto-coded when the record's nearest training "
        "text has that unit group at this cosine similarity or more (None: no rule)",
    )
    match_router: LevelRouter | None = Field(
        None,
        description="the probability that an answer its nearest training text agrees with is right, from "
        "that text's similarity (logistic on `match_features`, fitted on the same split)",
    )
    match_precision: float | None = Field(None, description="the match rule's precision on that split")
    match_coverage: float | None = Field(None, description="share the match rule auto-codes on that split")
    match_kind_similarities: dict[str, float] = Field(
        default_factory=dict,
        description="the similarity each kind of record alone would need (reported, see LevelRouter)",
    )
    match_shape_similarities: dict[str, float] = Field(
        default_factory=dict,
        description="the match rule's similarity for each record shape with enough fitting records "
        "(as `LevelRouter.shape_thresholds`; other shapes use `match_similarity`)",
    )
    match_language_similarities: dict[str, float] = Field(
        default_factory=dict,
        description="the match rule's similarity for languages other than English "
        "(as `LevelRouter.language_thresholds`)",
    )

    def _features(self, level_probs: np.ndarray, inputs: RecordInputs) -> np.ndarray:
        # the features this model was fitted on, by name: models from before a feature was added still load
        columns = [FEATURES.index(name) for name in self.features]
        return routing_features(level_probs, inputs)[:, columns]

    def probabilities(self, per_level: dict[int, np.ndarray], inputs: RecordInputs) -> dict[int, np.ndarray]:
        """level -> calibrated probability that the most likely group of that level is right, per record."""
        return {
            level: router.probability(self._features(per_level[level], inputs))
            for level, router in self.levels.items()
        }

    def matched(
        self,
        answers: np.ndarray,
        nearest: NearestMatch | None,
        shapes: np.ndarray,
        languages: np.ndarray | None = None,
    ) -> np.ndarray:
        """Records whose 4-digit answer (label ids) the nearest training text agrees with, near enough for
        the record's shape and language."""
        if nearest is None or self.match_similarity is None or self.match_router is None:
            return np.zeros(len(answers), dtype=bool)
        by_shape = np.array([self.match_shape_similarities.get(s, self.match_similarity) for s in shapes])
        needed = at_least_language(by_shape, self.match_language_similarities, languages)
        return (nearest.labels == answers) & (nearest.similarity >= needed)

    def unit_routing(
        self, per_level: dict[int, np.ndarray], inputs: RecordInputs, nearest: NearestMatch | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per record: the calibrated probability that the 4-digit answer is right, and whether routing
        auto-codes it (the router clears its shape's threshold, or the match rule holds: then the probability
        is at least the match router's, from the similarity). Review rules (`review_reasons`) still apply."""
        router = self.levels[4]
        shapes = inputs.shapes()
        p4 = router.probability(self._features(per_level[4], inputs))
        languages = inputs.language_codes()
        auto = p4 >= router.thresholds_for(shapes, languages)
        matched = self.matched(per_level[4].argmax(axis=1), nearest, shapes, languages)
        if not matched.any():
            return p4, auto
        assert nearest is not None and self.match_router is not None
        p_match = self.match_router.probability(match_features(nearest.similarity))
        return np.where(matched, np.maximum(p4, p_match), p4), auto | matched


def at_least_language(
    thresholds: np.ndarray, by_language: dict[str, float], languages: np.ndarray | None
) -> np.ndarray:
    """`thresholds` raised, for records in a language other than English, to their language's threshold in
    `by_language` (else its pooled `POOLED_LANGUAGES` one, if any)."""
    if languages is None or not by_language:
        return thresholds
    pooled = by_language.get(POOLED_LANGUAGES, -np.inf)
    floor = np.array(
        [-np.inf if lang == ENGLISH else by_language.get(lang, pooled) for lang in languages],
        dtype=np.float64,
    )
    return np.maximum(thresholds, floor)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def record_inputs(
    job_titles: Sequence[str],
    duties: Sequence[str],
    texts: Sequence[str],
    languages: Sequence[str] | None = None,
) -> RecordInputs:
    """What records gave (`RecordInputs`), from their fields, their model inputs `texts` and the language
    routing holds each to (`shared.screening.routing_languages`; None: all English)."""
    return RecordInputs(
        has_duties=np.array([bool((d or "").strip()) for d in duties], dtype=bool),
        n_words=np.array([len(t.split()) for t in texts], dtype=np.int64),
        has_industry=_has_industry(texts),
        languages=np.asarray(languages, dtype=object) if languages is not None else None,
    )
