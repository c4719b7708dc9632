"""Coded records as read: the default corpus's records and users' coded and corrections CSVs become `RawRow`s,
validated rows become `Example`s (services/trainer/preprocess.py `validate`).

    rows = read_coded_csv(path) + rows_from_corpus(build_default_corpus(settings))

CSVs are read by the uploads' reader (`shared.csvio`): same encodings, delimiters, header spellings and
errors. A file that cannot be used raises `DataError` naming the file, the field and the reason.

Every corpus record has its `language` (ISO 639-1, shared/corpus.py); a user's coded CSV may give one in a
`language` column (checked against the corpus languages in preprocess.validate); a row without one is
identified from its text there (shared/language.py; "" when unsure). The model's `languages` are those of its
training split (services/trainer/pipeline.py `trained_languages`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CORRECTION_SOURCE = "correction"
USER_SOURCE = "user"


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, the field and the reason."""


@dataclass
class RawRow:
    """A coded record as read, before validation; `origin` says where it came from (file:line or corpus)."""

    job_title: str
    duties_description: str
    isco_code: str
    source: str
    origin: str
    industry: str = ""
    language: str = ""  # ISO 639-1 as given ("" = not given)
    group: str = ""  # the occupation a record belongs to for the split (ESCO URI of a multilingual label)


@dataclass
class Example:
    """A validated training example."""

    text: str
    code: str
    source: str
    job_title: str
    duties_description: str
    origin: str
    industry: str = ""
    language: str = ""  # ISO 639-1; "" = not known (a user's row without a language column)
    group: str = ""  # RawRow.group; after the split, the unit it split by (splits.py split_group)


def _open_csv(
    path: Path, any_of: tuple[str, ...] = ("job_title", "duties_description")
) -> tuple[list[str], Iterable[tuple[int, dict[str, str]]]]:
    """Header (normalised names) and (line, row) pairs, read by the uploads' reader (`shared.csvio`): same
    encodings, delimiters, header spellings and errors."""
    from shared.csvio.reading import CsvFormatError, read_table

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return read_table(path, any_of=any_of)
    except CsvFormatError as exc:
        raise DataError(f"{path}: {exc}") from None


def read_coded_csv(path: Path, *, source: str = USER_SOURCE) -> list[RawRow]:
    """Read a coded CSV: job_title, duties_description, isco_code (either text column may be absent), and
    optionally industry (the employer's activity, read beside the title) and language (ISO 639-1 code of
    the row's text; absent or empty: identified in preprocess.validate).

    Header names are matched ignoring case and spaces. Raises DataError naming the missing field.
    """
    path = Path(path)
    header, rows = _open_csv(path)
    if "isco_code" not in header:
        raise DataError(f"{path}: missing column isco_code (columns found: {', '.join(header)})")
    if "job_title" not in header and "duties_description" not in header:
        raise DataError(
            f"{path}: needs a job_title and/or duties_description column (found: {', '.join(header)})"
        )
    return [
        RawRow(
            row.get("job_title", ""),
            row.get("duties_description", ""),
            row.get("isco_code", ""),
            source,
            f"{path.name}:{line}",
            row.get("industry", ""),
            row.get("language", "").strip().lower(),
        )
        for line, row in rows
    ]


def read_corrections(path: Path) -> list[RawRow]:
    """Read corrections from a CSV file or every *.csv in a directory.

    Accepted layouts: job_title, duties_description, corrected_isco_code (and optionally industry); or text,
    corrected_isco_code.
    """
    path = Path(path)
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: no .csv files with corrections found")
    out: list[RawRow] = []
    for file in files:
        header, rows = _open_csv(file, ("job_title", "duties_description", "text"))
        if "corrected_isco_code" not in header:
            raise DataError(
                f"{file}: missing column corrected_isco_code (columns found: {', '.join(header)})"
            )
        has_fields = "job_title" in header or "duties_description" in header
        if not has_fields and "text" not in header:
            raise DataError(
                f"{file}: needs job_title/duties_description or text columns (found: {', '.join(header)})"
            )
        for line, row in rows:
            if has_fields:
                title, duties = row.get("job_title", ""), row.get("duties_description", "")
            else:
                title, duties = row.get("text", ""), ""
            out.append(
                RawRow(
                    title,
                    duties,
                    row.get("corrected_isco_code", ""),
                    CORRECTION_SOURCE,
                    f"{file.name}:{line}",
                    row.get("industry", "") if has_fields else "",
                )
            )
    return out


def rows_from_corpus(records: Iterable[Any]) -> list[RawRow]:
    """RawRows from `shared.corpus.CodedRecord`s (or anything with the same four fields)."""
    return [
        RawRow(
            r.job_title,
            r.duties_description,
            r.isco_code,
            r.source,
            f"corpus:{r.source}",
            getattr(r, "industry", ""),
            getattr(r, "language", "en"),
            getattr(r, "occupation", ""),
        )
        for r in records
    ]
