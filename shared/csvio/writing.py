"""Writing result CSVs: the result columns, result rows, and formula neutralisation.

Output: the input columns, then `RESULT_COLUMNS` (the predict CSV contract), then `row_error` for job results.
Cells that a spreadsheet would evaluate as a formula are prefixed with an apostrophe.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from shared.csvio.reading import CsvLayout, iter_rows, normalise_header
from shared.schemas import Prediction

RESULT_COLUMNS = [
    "isco_code",
    "level",
    "title",
    "confidence",
    "is_fallback",
    "unit_code",
    "unit_confidence",
    "top_codes",
    "top_confidences",
    "needs_review",
    "review_reasons",
    "language",  # ISO 639-1: the language the row was coded as (an input `language` column is its hint)
    "language_detected",  # what the text alone is written in, when sure (empty: unsure)
]
ROW_ERROR = "row_error"
# The columns a job result adds after the input's: the single place that defines them (the job result header
# is `result_header(input_header)`). Columns added later (e.g. a reviewer's final code) go at the end, so
# that readers that address columns by name keep working.
JOB_RESULT_COLUMNS = [*RESULT_COLUMNS, ROW_ERROR]

_FORMULA_START = ("=", "@", "\t", "\r")
# After a leading + or -, a spreadsheet computes what follows (`+1+1` becomes 2, `-cmd|' /C calc'!A0` runs a
# command). Left as written: a lone sign, a plain number (-1.5, +3, 1e-3) and a phone number (+ digits in
# space-separated groups: +44 20 7946 0958, +1 (555) 010-9999), which a spreadsheet keeps as typed text.
_PLAIN_SIGNED = re.compile(r"[+-]|[+-]?\d+(?:[.,]\d+)*(?:[eE][+-]?\d+)?|\+\d[\d().-]*(?:\s+[\d().-]+)+")


def neutralise(cell: object) -> str:
    """A cell that a spreadsheet would run as a formula gets a leading apostrophe (OWASP's advice for CSV
    injection; the apostrophe is what spreadsheets themselves use to mark text).

    Run: anything starting with = or @ (or a tab or CR), and + or - followed by more than a number (a
    calculation, a function, a reference, a DDE call). Plain numbers (-1.5, +3), a lone - and phone numbers
    stay as they are.
    """
    text = "" if cell is None else str(cell)
    if text.startswith(_FORMULA_START):
        return "'" + text
    if text.startswith(("+", "-")) and not _PLAIN_SIGNED.fullmatch(text):
        return "'" + text
    return text


def result_header(input_header: Sequence[str], *, job: bool = True) -> list[str]:
    """The one definition of a result file's header: input columns (as written), then the result columns
    (`RESULT_COLUMNS`, and for job results `JOB_RESULT_COLUMNS`).

    Every name in the header is unique: an input column whose name clashes with a result column, or with an
    earlier column, gets an `input_` prefix (repeated while it still clashes), so `isco_code` and
    `input_isco_code` in the input become `input_isco_code` and `input_input_isco_code`.
    """
    outputs = JOB_RESULT_COLUMNS if job else RESULT_COLUMNS
    taken = {normalise_header(c) for c in outputs}
    header = []
    for name in input_header:
        clean = name.replace("\ufeff", "").strip()
        while normalise_header(clean) in taken:
            clean = f"input_{clean}"
        taken.add(normalise_header(clean))
        header.append(clean)
    return header + list(outputs)


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def prediction_cells(prediction: Prediction) -> list[str]:
    """The values of `RESULT_COLUMNS` for one prediction (top-5 codes and confidences joined by |)."""
    top = prediction.alternatives[:5]
    return [
        prediction.isco_code or "",
        "" if prediction.level is None else str(prediction.level),
        prediction.title or "",
        _fmt(prediction.confidence),
        "true" if prediction.is_fallback else "false",
        prediction.unit_code,
        _fmt(prediction.unit_confidence),
        "|".join(a.code for a in top),
        "|".join(_fmt(a.confidence) for a in top),
        "true" if prediction.needs_review else "false",
        "|".join(prediction.review_reasons),
        prediction.language or "",
        prediction.language_detected or "",
    ]


EMPTY_RESULT = [""] * len(RESULT_COLUMNS)


def result_row(cells: Sequence[str], outcome: Prediction | str, *, job: bool = True) -> list[str]:
    """One output row: input cells, result cells (empty on error), and the row error for job results.
    Every cell is neutralised."""
    if isinstance(outcome, str):
        values = [*cells, *EMPTY_RESULT] + ([outcome] if job else [])
    else:
        values = [*cells, *prediction_cells(outcome)] + ([""] if job else [])
    return [neutralise(v) for v in values]


def writer(stream: IO[str], delimiter: str = ",") -> Any:
    """A csv writer with the settings every result file uses (minimal quoting, CRLF as RFC 4180 says)."""
    return csv.writer(stream, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")


def write_rows(stream: IO[str], rows: Iterable[Sequence[str]], delimiter: str = ",") -> int:
    """Write already neutralised rows; returns how many."""
    w = writer(stream, delimiter)
    n = 0
    for row in rows:
        w.writerow(row)
        n += 1
    return n


def format_row(cells: Sequence[str], delimiter: str = ",") -> str:
    """One CSV line (cells as given: neutralise them first, e.g. with `result_row`)."""
    buf = io.StringIO()
    writer(buf, delimiter).writerow(cells)
    return buf.getvalue()


def header_line(header: Sequence[str], delimiter: str = ",") -> str:
    """The header as one CSV line (neutralised like every other cell)."""
    return format_row([neutralise(h) for h in header], delimiter)


def copy_with_header(source: Path, dest: Path, layout: CsvLayout) -> int:
    """Copy a checked input CSV to `dest` with `layout.header` as its header (the header with the columns a
    coder chose by hand renamed, `reading.mapped_header`), in the file's delimiter; returns the data rows.
    Cells are copied as read (an input, not a result: nothing is neutralised)."""
    rows = 0
    with open(dest, "w", encoding="utf-8", newline="") as out:
        w = writer(out, layout.delimiter)
        w.writerow(layout.header)
        for row in iter_rows(source, layout):
            w.writerow(row.cells)
            rows += 1
    return rows
