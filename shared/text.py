"""Text cleaning and the single place that turns a job record into model input."""

from __future__ import annotations

import html
import re
import unicodedata

from shared.titles import normalise_title

_TAG = re.compile(r"<[^>]{0,200}>")
_SPACE = re.compile(r"\s+")
_QUOTES = str.maketrans(
    {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"}
)
_REPEATED_PUNCT = re.compile(r"([!?.,;:\-_*=#~])\1{2,}")


def clean_text(text: str | None) -> str:
    """Normalise unicode (NFKC), unescape and strip HTML, unify quotes and dashes, fold white space."""
    if not text:
        return ""
    text = unicodedata.normalize("NFKC", str(text))
    text = html.unescape(text)
    text = _TAG.sub(" ", text)
    text = text.translate(_QUOTES)
    text = "".join(ch for ch in text if ch in "\t\n" or unicodedata.category(ch)[0] != "C")
    text = _REPEATED_PUNCT.sub(r"\1", text)
    return _SPACE.sub(" ", text).strip()


TITLE_SEPARATOR = " : "  # between title and duties in a model input
INDUSTRY_MARK = (
    "industry:"  # the industry follows the title, before the duties: "inspector (industry: paper)"
)
INDUSTRY_MAX_CHARS = 120  # an employer's activity is a phrase; longer text is cut (and flagged by the caller)

# Short forms of coding indexes and survey write-ins in the industry phrase ("paper mfr", "local govt").
_INDUSTRY_WORDS = {"mfr": "manufacturing", "mfg": "manufacturing", "govt": "government", "dept": "department"}
_WORD_TOKEN = re.compile(r"[a-z0-9]+|[^a-z0-9]+")


def duties_part(text: str) -> str:
    """The duties of a model input, "" for a title alone (the duties view: `shared.model.scorer`)."""
    return text.partition(TITLE_SEPARATOR)[2]


def industry_phrase(industry: str | None) -> str:
    """The employer's activity as the model reads it: cleaned, lower-cased, short forms spelled out, at most
    `INDUSTRY_MAX_CHARS`; "" when empty or white space."""
    text = clean_text(industry).lower()[:INDUSTRY_MAX_CHARS].strip()
    # " : " separates title from duties in a model input; an industry must not move that boundary.
    text = text.replace(":", " ").strip()
    tokens = _WORD_TOKEN.findall(text)
    return _SPACE.sub(" ", "".join(_INDUSTRY_WORDS.get(t, t) for t in tokens)).strip()


def model_input(job_title: str | None, duties_description: str | None, industry: str | None = None) -> str:
    """The one text the model sees for a record: cleaned title, the employer's industry, then the duties.

    Lower-cased because the default tokenizer is uncased; the title comes first because titles carry
    most of the signal and truncation cuts from the end. Titles are normalised (`shared.titles`
    `normalise_title`): an abbreviation beside its long form dropped, the "head - qualifier" form
    reordered, abbreviations spelled out ("HGV1 driver" -> "heavy goods vehicle driver"). The industry
    (optional, `industry_phrase`) stands beside the title as coding indexes write it ("inspector (industry:
    paper manufacturing)"): it qualifies the title, as a coder reads it, and stays out of the duties view.
    """
    title = normalise_title(clean_text(job_title).lower())
    industry_text = industry_phrase(industry)
    if industry_text:
        title = f"{title} ({INDUSTRY_MARK} {industry_text})".strip()
    duties = clean_text(duties_description).lower()
    if title and duties:
        return f"{title}{TITLE_SEPARATOR}{duties}"
    return title or duties
