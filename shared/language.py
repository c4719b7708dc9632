"""Language identification of a record: which language (ISO 639-1) and script its text is in, how sure.

A maintained identifier, py3langid (langid.py's naive Bayes over byte n-grams, 97 languages, numpy only), not
word lists. Chosen over lingua-language-detector by `bench/experiments/language_id.py` (RESULTS-issue28.md):
lingua has no Maltese, loads for 13 s and costs ~0.5 ms per short title in its accurate mode; py3langid covers
all 26 languages at ~0.05 ms per text, within the budget of one record on the gateway (p50 < 20 ms).

How a record is read:
- The script first (Unicode letters): Greek letters are Greek, Cyrillic is Bulgarian or another Cyrillic
  language, Arabic, Hebrew, CJK ... are scripts none of the service's languages is written in. A model reads
  the scripts of its languages only (`SCRIPTS`).
- Within a script, py3langid's probabilities renormalised over the languages written in it (`CANDIDATES`):
  Latin text is one of the 23 Latin-script languages of the service (no Turkish or Indonesian guess for
  "Manager"), Cyrillic one of bg, ru, uk, sr, mk, be.
- Short titles are ambiguous ("Manager", "chef" are many languages' words): below `CONFIDENT` the text is
  *unsure* (`Identification.language` None) and the decision layer reads it in the model's own languages
  (`shared.screening.read_language`), so an unsure English title is never sent to a coder for its language.

The decision (which languages a model covers, a caller's hint, `unsupported_language`) is
`shared.screening`'s; this module only identifies. No model code: the gateway may import it.
"""

from __future__ import annotations

import copy
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

# The service's languages: ESCO's 25 (../shared/README.md) and English. A caller's `language` hint is one of
# these (shared.schemas.JobRecord); a result's `language` may also be another language py3langid knows
# ("ru", "ar", "zh"), which no model covers.
LANGUAGES = (
    "en", "bg", "cs", "da", "de", "el", "es", "et", "fi", "fr", "ga", "hr", "hu",
    "is", "it", "lt", "lv", "mt", "nl", "no", "pl", "pt", "ro", "sk", "sl", "sv",
)  # fmt: skip
DEFAULT_MODEL_LANGUAGES = ("en",)  # what a model directory without a `languages` list covers

LATIN, GREEK, CYRILLIC = "latin", "greek", "cyrillic"
# The script each service language is written in (every other one is Latin).
SCRIPTS: dict[str, str] = {code: LATIN for code in LANGUAGES} | {"el": GREEK, "bg": CYRILLIC}
# Languages a text in a script is told apart among. Cyrillic includes the languages the service does not
# code, so that Russian is told from Bulgarian and goes to a coder.
CANDIDATES: dict[str, tuple[str, ...]] = {
    LATIN: tuple(c for c in LANGUAGES if SCRIPTS[c] == LATIN),
    GREEK: ("el",),
    CYRILLIC: ("bg", "ru", "uk", "sr", "mk", "be"),
}
# Probability (within the script's candidates) at or above which an identification is sure. Chosen on
# ESCO's multilingual labels and the English corpus titles (bench/experiments/language_id.py --sweep), never
# on the dev sets: at 0.7, 0.3% of English corpus titles are read as another language (1.9% at 0.5) and
# 70% of the other languages' ESCO labels are sure (82% at 0.5); no Bulgarian label is read as Russian.
CONFIDENT = 0.7
# A script is present in a text when it has this many letters (an acronym such as "IT" in Greek text is not
# a Latin text) or all of its letters.
MIN_SCRIPT_LETTERS = 3
MAX_CHARS = 300  # characters of a record read to identify it


@dataclass(frozen=True)
class Identification:
    """What a text is written in.

    `language`: the identified language when sure (>= CONFIDENT), else None; `best`: the most likely one
    anyway; `confidence`: its probability among its script's candidates; `scripts`: the scripts present
    (`latin`, `greek`, `cyrillic`, `arabic`, `cjk`, ... lower-case Unicode script names); `ranking`: each
    candidate's probability, most likely first (empty for a script the service does not identify within).
    """

    language: str | None
    best: str
    confidence: float
    scripts: frozenset[str]
    ranking: tuple[tuple[str, float], ...] = ()


_SCRIPT_NAMES = {"CJK": "cjk", "HIRAGANA": "cjk", "KATAKANA": "cjk", "HANGUL": "hangul"}


def _script_of(ch: str) -> str:
    if ch < "\u0250" or "\u1e00" <= ch < "\u1f00":  # ASCII, Latin-1, Latin Extended A/B and Additional
        return LATIN
    if "\u0370" <= ch < "\u0400" or "\u1f00" <= ch < "\u2000":
        return GREEK
    if "\u0400" <= ch < "\u0530":
        return CYRILLIC
    first = unicodedata.name(ch, "OTHER").split(" ", 1)[0]
    return _SCRIPT_NAMES.get(first, first.lower())


def _letters_per_script(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ch in text:
        if ch.isalpha():
            script = _script_of(ch)
            counts[script] = counts.get(script, 0) + 1
    return counts


def _present(counts: dict[str, int]) -> frozenset[str]:
    if len(counts) <= 1:
        return frozenset(counts)
    present = frozenset(s for s, n in counts.items() if n >= MIN_SCRIPT_LETTERS)
    return present or frozenset([max(counts, key=lambda s: counts[s])])


def scripts_of(text: str) -> frozenset[str]:
    """The scripts a text's letters are written in (those with at least MIN_SCRIPT_LETTERS letters, or the
    only script); digits, punctuation and symbols have none."""
    return _present(_letters_per_script(text))


@lru_cache(maxsize=1)
def _identifiers() -> dict[str | None, Any]:
    """py3langid's model, loaded once (~1 s), probabilities normalised: one identifier over all its languages
    (None) and one restricted to each script's candidates (copies sharing the model; `set_languages` slices
    the copy's own arrays). Only read afterwards, so safe across threads."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    full = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    out: dict[str | None, Any] = {None: full}
    for script, candidates in CANDIDATES.items():
        restricted = copy.copy(full)
        restricted.set_languages(list(candidates))
        out[script] = restricted
    return out


def identify(text: str) -> Identification:
    """Identify one text (a title, duties, or a whole record's fields joined by spaces); only its first
    `MAX_CHARS` characters are read (enough for a language, and it bounds the cost of a long duties text)."""
    text = text[:MAX_CHARS]
    counts = _letters_per_script(text)
    scripts = _present(counts)
    if not scripts:
        return Identification(None, DEFAULT_MODEL_LANGUAGES[0], 0.0, scripts)
    # the script with most letters decides where to look; the other scripts present are reported (a model
    # must read each of them: shared.screening)
    main = max(scripts, key=lambda s: counts[s])
    identifiers = _identifiers()
    if main not in CANDIDATES:  # a script none of the service's languages uses: py3langid's own answer
        best, p = identifiers[None].classify(text)
        return Identification(best, best, float(p), scripts)
    if len(CANDIDATES[main]) == 1:
        only = CANDIDATES[main][0]
        return Identification(only, only, 1.0, scripts, ((only, 1.0),))
    ranking = tuple((lang, float(p)) for lang, p in identifiers[main].rank(text))
    best, p = ranking[0]
    return Identification(best if p >= CONFIDENT else None, best, p, scripts, ranking)


def record_text(job_title: str | None, duties_description: str | None, industry: str | None = "") -> str:
    """The text identified for a record: title, duties and industry together (a short title alone is often
    ambiguous; the other fields are usually in the same language)."""
    return " ".join(
        part.strip() for part in (job_title, duties_description, industry) if part and part.strip()
    )


def normalise_code(value: str) -> str:
    """A hint as written ("DE", " de ") -> its code ("de")."""
    return value.strip().lower()
