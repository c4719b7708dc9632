"""ESCO's occupation labels in 25 languages: the training labels, and the held-out occupations' dev split.

The facts table `shared/data/esco_labels_multilingual.csv.gz` (built by `scripts/build_facts.py` from ESCO
v1.0.8, (c) European Union, reuse authorised with the source acknowledged) holds 296,289 preferred and
alternative labels of 2,648 occupations, each with its concept URI and ISCO-08 unit group.

Held out: one occupation in ten (`held_out_occupation`: sha1 of its concept URI, mod 10 == 0; the same rule
as bench/experiments/multilingual_encoders.py, so figures there and in bench/multilingual.py are taken on the
same occupations). Their labels in every language never train (nor enter the trainer's validation or test);
they are the per-language dev split (`dev_split`) that bench/multilingual.py measures: a title of an
occupation the model never saw in that language, as users send. Their English ESCO v1.2 labels stay in the
English corpus (shared/corpus.py), as in the issue's own measure: what is measured is coding a language, not
an occupation that no language ever showed.

Sampling (`training_labels`): the labels are six times the English corpus, and an occupation has up to dozens
of labels in a language (gendered forms, spelling variants). At most `max_labels` labels per occupation and
language train: the preferred label always, then alternative labels in an order fixed by a seeded hash (the
same labels on every run and machine). `max_labels` None keeps every label. Outside the dev split (2,361
occupations; 287 held out, 32,365 labels) the 25 languages give 59,025 labels at K=1 (the preferred labels),
104,022 at K=2, 144,008 at K=3 and 263,924 in all; the English corpus is 79,339 records.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

MULTILINGUAL_CSV = Path(__file__).parent / "data" / "esco_labels_multilingual.csv.gz"
# ISO 639-1 codes of the file's languages (Norwegian as ESCO writes it: "no")
ESCO_LANGUAGES = (
    "bg", "cs", "da", "de", "el", "es", "et", "fi", "fr", "ga", "hr", "hu", "is",
    "it", "lt", "lv", "mt", "nl", "no", "pl", "pt", "ro", "sk", "sl", "sv",
)  # fmt: skip
CORPUS_LANGUAGES = ("en", *ESCO_LANGUAGES)  # what the default corpus can train on
DEV_MODULUS = 10  # one occupation in ten is held out


@dataclass(frozen=True)
class LanguageLabel:
    """One ESCO occupation label in one language, with its occupation and ISCO-08 unit group."""

    concept_uri: str
    language: str
    label_kind: str  # preferred | alternative
    label: str
    isco_code: str


def check_languages(languages: Iterable[str]) -> list[str]:
    """The corpus languages as given, lower-cased, de-duplicated, in order; ValueError names an unknown code
    and the accepted ones."""
    out: list[str] = []
    for raw in languages:
        code = str(raw).strip().lower()
        if code not in CORPUS_LANGUAGES:
            raise ValueError(
                f"languages: {raw!r} is not a corpus language; accepted codes (ISO 639-1): "
                f"{', '.join(CORPUS_LANGUAGES)}"
            )
        if code not in out:
            out.append(code)
    return out


@lru_cache(maxsize=2)
def load_labels(path: Path = MULTILINGUAL_CSV) -> tuple[LanguageLabel, ...]:
    """Every label of the facts table, in the file's order."""
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        return tuple(
            LanguageLabel(r["concept_uri"], r["lang"], r["label_kind"], r["label"], r["isco_code"])
            for r in csv.DictReader(f)
        )


def held_out_occupation(concept_uri: str) -> bool:
    """True for the occupations of the dev split (one in ten, by a hash of the URI: stable as data grows)."""
    return int(hashlib.sha1(concept_uri.encode()).hexdigest(), 16) % DEV_MODULUS == 0


def _order(seed: int, *parts: str) -> str:
    return hashlib.sha1(":".join((str(seed), *parts)).encode()).hexdigest()


def training_labels(
    languages: Sequence[str],
    max_labels: int | None = 2,
    *,
    seed: int = 13,
    labels: Sequence[LanguageLabel] | None = None,
) -> list[LanguageLabel]:
    """The labels that train: occupations outside the dev split, in `languages` (English is not in this
    file and is skipped), at most `max_labels` per occupation and language (the preferred label first, then
    alternatives in seeded-hash order; None = all). File order is kept."""
    return sample_labels(languages, max_labels, seed=seed, labels=labels)[0]


def sample_labels(
    languages: Sequence[str],
    max_labels: int | None = 2,
    *,
    seed: int = 13,
    labels: Sequence[LanguageLabel] | None = None,
) -> tuple[list[LanguageLabel], list[LanguageLabel]]:
    """(the labels that train, the rest): the labels of occupations outside the dev split in `languages`,
    parted by `training_labels`' sample. The rest are what a validation or test occupation also holds: users
    write an occupation in every form its language has, not only in the sampled ones, so the trainer's
    held-out splits keep all of them (`esco_title_multilingual_eval` in shared/corpus.py)."""
    if max_labels is not None and max_labels < 1:
        raise ValueError(f"max_labels: must be at least 1 (the preferred label) or None, got {max_labels}")
    wanted = set(languages)
    labels = load_labels() if labels is None else labels
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        if label.language in wanted and not held_out_occupation(label.concept_uri):
            groups[(label.concept_uri, label.language)].append(i)
    kept: list[int] = []
    rest: list[int] = []
    for members in groups.values():
        if max_labels is not None and len(members) > max_labels:
            members = sorted(
                members,
                key=lambda i: (
                    labels[i].label_kind != "preferred",
                    _order(seed, labels[i].concept_uri, labels[i].label),
                ),
            )
            rest.extend(members[max_labels:])
            members = members[:max_labels]
        kept.extend(members)
    return [labels[i] for i in sorted(kept)], [labels[i] for i in sorted(rest)]


def dev_split(
    languages: Sequence[str] | None = None,
    per_language: int | None = None,
    *,
    seed: int = 0,
    labels: Sequence[LanguageLabel] | None = None,
) -> list[LanguageLabel]:
    """The held-out occupations' labels (`held_out_occupation`), per language in `languages` (None: all),
    up to `per_language` labels each, chosen by a seeded hash (the same on every run); grouped by language
    in the order of `languages` (else ESCO_LANGUAGES), file order within a language. Never trained on:
    `training_labels` and therefore the default corpus leave these occupations out."""
    chosen = list(languages) if languages is not None else list(ESCO_LANGUAGES)
    labels = load_labels() if labels is None else labels
    by_language: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        if label.language in chosen and held_out_occupation(label.concept_uri):
            by_language[label.language].append(i)
    out: list[LanguageLabel] = []
    for language in chosen:
        members = by_language.get(language, [])
        if per_language is not None and len(members) > per_language:
            members = sorted(
                sorted(members, key=lambda i: _order(seed, labels[i].concept_uri, labels[i].label))[
                    :per_language
                ]
            )
        out.extend(labels[i] for i in members)
    return out
