"""Screening: records never auto-coded whatever the model's confidence, and why a record goes to a coder.

Standard library, numpy and the language identifier (`shared.language`), no model code: the serving side
and the trainer import it.

- `not_an_occupation`: answers that describe a status, not a job (student, retired, unemployed, homemaker,
  unknown, none, n/a ...). They are never auto-coded, whatever the model says.
- `read_language`: the record's language for a model (identified by `shared.language`, or the caller's hint),
  whether the model covers it (model.json `languages`, `shared.model.directory`), and whether a hint
  contradicts the text. A language or script the model does not cover goes to a coder
  (`unsupported_language`); a contradicted hint too (`language_mismatch`).
- `review_reasons`: why a record goes to a coder; `flagged`: the records these rules keep from auto-coding.

Which answers the model is sure enough of is the router's (`shared.routing`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shared.language import DEFAULT_MODEL_LANGUAGES, LATIN, SCRIPTS, identify
from shared.language import record_text as language_text

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


# The routing key of a record whose language is neither hinted nor surely identified (`routing_key`)
UNSURE_LANGUAGE = "?"


@dataclass(frozen=True)
class LanguageReading:
    """How a record's language is read for a model (Prediction.language and language_detected).

    `language`: what the record is coded as: the caller's hint, else the identified language, else (unsure)
    the most likely of the model's own languages; `detected`: what the text alone says when the identifier
    is sure, else None; `mismatch`: a hint that a sure identification contradicts; `unsupported`: the model
    does not cover the language, or cannot read a script of the text.
    """

    language: str
    detected: str | None
    mismatch: bool
    unsupported: bool
    hinted: bool = False  # the caller gave the language

    def routing_key(self) -> str:
        """The language routing holds this record to (`shared.routing.RecordInputs.languages`): the hinted or
        surely identified language, else `UNSURE_LANGUAGE`: a short title the identifier cannot place was
        only guessed to be in the model's most likely language (often English), and a foreign label guessed
        English must not meet English's threshold (routing holds it to the pooled non-English one)."""
        return self.language if self.hinted or self.detected is not None else UNSURE_LANGUAGE


def read_language(
    job_title: str | None,
    duties_description: str | None,
    industry: str | None = "",
    hint: str | None = None,
    model_languages: Sequence[str] = DEFAULT_MODEL_LANGUAGES,
) -> LanguageReading:
    """Read a record's language for a model covering `model_languages` (its model.json `languages`).

    Title, duties and industry are identified together (a short title alone is ambiguous). Unsure, the record
    is read in the model's languages (an English title such as "Manager" is never sent away for its
    language); a sure identification of a language the model lacks, a hint naming one, or a script the model
    cannot read (Greek for an English model; Cyrillic other than Bulgarian; Arabic, CJK for every model)
    makes it `unsupported`. Mixed-language records are read as their text's main language; a second script
    in them must be readable too. Transliterations read as the Latin language they resemble, usually unsure.
    """
    found = identify(language_text(job_title, duties_description, industry))
    covered = set(model_languages)
    detected = found.language
    if hint:
        language = hint
    elif detected is not None:
        language = detected
    else:
        language = next((code for code, _ in found.ranking if code in covered), found.best)
    readable = {SCRIPTS.get(code, LATIN) for code in covered}
    unsupported = (
        language not in covered
        or (detected is not None and detected not in covered)
        or not found.scripts <= readable
    )
    mismatch = bool(hint) and detected is not None and detected != hint
    return LanguageReading(language, detected, mismatch, unsupported, hinted=bool(hint))


def read_languages(
    job_titles: Sequence[str],
    duties: Sequence[str],
    industries: Sequence[str] | None = None,
    model_languages: Sequence[str] = DEFAULT_MODEL_LANGUAGES,
    hint: str | None = None,
) -> list[LanguageReading]:
    """`read_language` of each record, as evaluation reads records: with no hint, or one `hint` for all (a
    benchmark of records that all come in one known language)."""
    industries = industries or [""] * len(job_titles)
    return [
        read_language(t, d, i, hint, model_languages)
        for t, d, i in zip(job_titles, duties, industries, strict=True)
    ]


def routing_languages(
    readings: Sequence[LanguageReading], model_languages: Sequence[str]
) -> list[str] | None:
    """The language routing holds each record to (`LanguageReading.routing_key`), for a model of several
    languages; None for a one-language model, whose records are all read in its language (as it was
    fitted)."""
    if len(set(model_languages)) < 2:
        return None
    return [reading.routing_key() for reading in readings]


def flagged(
    job_titles: Sequence[str], duties: Sequence[str], readings: Sequence[LanguageReading]
) -> np.ndarray:
    """Records never auto-coded whatever their confidence: not an occupation, or (their `readings`) in a
    language or script the model does not cover, or with a hint their text contradicts."""
    return np.array(
        [
            not_an_occupation(t, d) or reading.unsupported or reading.mismatch
            for t, d, reading in zip(job_titles, duties, readings, strict=True)
        ],
        dtype=bool,
    )


def review_reasons(
    job_title: str | None,
    duties_description: str | None,
    level: int | None,
    reading: LanguageReading | None = None,
) -> list[str]:
    """Why a record goes to a coder, in `shared.schemas.REVIEW_REASONS` order; empty: auto-code it.

    `level`: the level answered (4 = unit group), None when not coded; `reading`: the record's language as
    `read_language` read it for the model (None: the record's language is not checked).
    """
    reasons = []
    if level is None:
        reasons.append("not_coded")
    elif level < 4:
        reasons.append("below_threshold")
    if not_an_occupation(job_title, duties_description):
        reasons.append("not_an_occupation")
    if reading is not None and reading.unsupported:
        reasons.append("unsupported_language")
    if reading is not None and reading.mismatch:
        reasons.append("language_mismatch")
    return reasons
