"""Text cleaning and the single place that turns a job record into model input."""

from __future__ import annotations

import html
import re
import unicodedata

from shared.variants import normalise_title

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


def duties_part(text: str) -> str:
    """The duties of a model input, "" for a title alone (the duties view: `shared.model.scorer`)."""
    return text.partition(TITLE_SEPARATOR)[2]


def model_input(job_title: str | None, duties_description: str | None) -> str:
    """The one text the model sees for a record: cleaned title and duties joined by a separator.

    Lower-cased because the default tokenizer is uncased; the title comes first because titles carry
    most of the signal and truncation cuts from the end. Titles are normalised (`shared.variants`
    `normalise_title`): an abbreviation beside its long form dropped, the "head - qualifier" form
    reordered, abbreviations spelled out ("HGV1 driver" -> "heavy goods vehicle driver").
    """
    title = normalise_title(clean_text(job_title).lower())
    duties = clean_text(duties_description).lower()
    if title and duties:
        return f"{title}{TITLE_SEPARATOR}{duties}"
    return title or duties
