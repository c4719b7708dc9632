"""Job titles as people write them, read the way the model reads every title.

- `normalise_title`: how the model reads every title, in training and inference alike
  (`shared.text.model_input`):
  - `drop_alias`: a title given with its abbreviation in parentheses ("claims rep (claims representative)",
    "lpc" beside "licensed professional counselor") read as the long form alone;
  - `head_last`: the "head - qualifier" form of occupation indexes and job boards ("machine operator - wood
    grinding", "nurse - night shift") put back in the natural order ("wood grinding machine operator").
    No ESCO title is written that way, so the model would otherwise meet the form only at inference;
  - `expand_abbreviations`: the short forms of job boards and survey write-ins (HGV1, FLT, RGN, GP, snr ...)
    spelled out, so "Snr software dev" reads "senior software developer".
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# short form -> long form. Two forms where the word is a noun at the end ("software dev") and a modifier
# before another word ("dev manager"). Only whole words of the title are replaced.
EXPANSIONS: dict[str, str | tuple[str, str]] = {
    "hgv": "heavy goods vehicle",
    "hgv1": "heavy goods vehicle",
    "hgv2": "heavy goods vehicle",
    "lgv": "large goods vehicle",
    "pcv": "passenger carrying vehicle",
    "flt": "forklift truck",
    "rgn": "registered general nurse",
    "rmn": "registered mental health nurse",
    "rn": "registered nurse",
    "lpn": "licensed practical nurse",
    "hca": "healthcare assistant",
    "gp": "general practitioner",
    "nqt": "newly qualified teacher",
    "lsa": "learning support assistant",
    "snr": "senior",
    "sr": "senior",
    "jnr": "junior",
    "jr": "junior",
    "asst": "assistant",
    "mgr": "manager",
    "mngr": "manager",
    "supv": "supervisor",
    "coord": "coordinator",
    "rep": "representative",
    "dept": "department",
    "ops": "operations",
    "maint": "maintenance",
    "mech": ("mechanic", "mechanical"),
    "elec": ("electrician", "electrical"),
    "dev": ("developer", "development"),
    "devs": "developers",
    "eng": ("engineer", "engineering"),
    "engr": "engineer",
    "tech": ("technician", "technical"),
    "admin": ("administrator", "administrative"),
    "hr": "human resources",
    "qa": "quality assurance",
    "ceo": "chief executive officer",
    "cfo": "chief financial officer",
    "cto": "chief technology officer",
    "coo": "chief operating officer",
    "hvac": "heating ventilation and air conditioning",
}
_TOKEN = re.compile(r"[a-z0-9]+|[^a-z0-9]+")


def head_last(title: str) -> str:
    """`head - qualifier` -> `qualifier head` ("machine operator - wood grinding" -> "wood grinding machine
    operator"); any other title is left as it is. Only one spaced dash, between a head of at most 5 words
    and a qualifier of at most 8: a hyphen inside a word ("setter-operator") is no separator, and longer
    parts are more likely a sentence than a qualified title."""
    parts = title.split(" - ")
    if len(parts) != 2:
        return title
    head, qualifier = (p.strip() for p in parts)
    if not head or not qualifier or len(head.split()) > 5 or len(qualifier.split()) > 8:
        return title
    return f"{qualifier} {head}"


_ALIASED = re.compile(r"^(?P<outside>[^()]+?) \((?P<inside>[^()]+)\)$")
_WORD = re.compile(r"[a-z0-9]+")
_FILLERS = {"and", "of", "for", "in", "the"}


def _readings(word: str, long: list[str]) -> Iterator[list[str]]:
    """The rests of `long` after reading `word` from its start: as a prefix of its first word ("tech" of
    "technician") or as the initials of its first words ("rn" of "registered nurse", fillers skipped)."""
    if long and long[0].startswith(word):
        yield long[1:]
    if len(word) < 2:
        return

    def initials(i: int, j: int) -> Iterator[list[str]]:
        if i == len(word):
            yield long[j:]
        elif j < len(long):
            if long[j][0] == word[i]:
                yield from initials(i + 1, j + 1)
            if long[j] in _FILLERS:
                yield from initials(i, j + 1)

    yield from initials(0, 0)


def _shortens(short: list[str], long: list[str]) -> bool:
    """Whether `short` is `long` abbreviated, word by word, in order ("food gm" of "food general manager")."""
    if not short:
        return all(w in _FILLERS for w in long)
    return any(_shortens(short[1:], rest) for rest in _readings(short[0], long))


def drop_alias(title: str) -> str:
    """`short form (long form)` or the reverse -> `long form` ("support tech (support technician)", "bha
    (behavioral health aide)" -> "behavioral health aide"), as job boards and O*NET give a title with its
    abbreviation. A qualifier in parentheses ("painter (construction)") is no alias and stays. Sides of
    more than 8 words are left alone: they are no title, and the word-by-word match branches on each word."""
    match = _ALIASED.match(title)
    if not match:
        return title
    outside, inside = match["outside"].strip(), match["inside"].strip()
    out_words, in_words = _WORD.findall(outside), _WORD.findall(inside)
    if not out_words or not in_words or out_words == in_words or max(len(out_words), len(in_words)) > 8:
        return title
    if _shortens(in_words, out_words):
        return outside
    if _shortens(out_words, in_words):
        return inside
    return title


def normalise_title(title: str) -> str:
    """A cleaned, lower-cased title as the model reads it: an abbreviation given beside its long form
    dropped, head last, abbreviations spelled out."""
    return expand_abbreviations(head_last(drop_alias(title)))


def expand_abbreviations(title: str) -> str:
    """Spell out known job-title abbreviations in a lower-cased title ("snr software dev" -> "senior software
    developer"); anything else is left as it is."""
    tokens = _TOKEN.findall(title)
    words = [i for i, t in enumerate(tokens) if t[0].isalnum()]
    if not any(tokens[i] in EXPANSIONS for i in words):
        return title
    for k, i in enumerate(words):
        long = EXPANSIONS.get(tokens[i])
        if long is None:
            continue
        if isinstance(long, tuple):
            # a noun at the end or before a separator ("dev - london"), a modifier before another word
            nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
            is_last = k == len(words) - 1 or nxt.strip() not in ("",)
            long = long[0] if is_last else long[1]
        tokens[i] = long
        if i + 1 < len(tokens) and tokens[i + 1].startswith("."):  # "sr. accountant"
            tokens[i + 1] = tokens[i + 1][1:] or " "
    return " ".join("".join(tokens).split())
