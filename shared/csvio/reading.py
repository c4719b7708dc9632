"""Reading job CSVs: encoding, delimiter and header sniffed from the first bytes, rows streamed, checked.

Used by the gateway (upload checks), the workers (job input), the trainer (coded files) and `isco predict`.
Nothing here holds a whole file in memory, and nothing here imports the gateway or the model stack.

Input: UTF-8 with or without a BOM; comma, semicolon or tab delimited (sniffed from the header line); a header
with `job_title` and/or `duties_description`, matched case- and space-insensitively ("Job Title" works), and
optionally `industry` (the employer's activity, read as context; a file without it is coded as before);
extra columns pass through to the result (the industry column too). Problems raise `CsvFormatError` with a
`code` a client can act on and a message a person can read.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

TITLE = "job_title"
DUTIES = "duties_description"
TEXT_COLUMNS = (TITLE, DUTIES)
INDUSTRY = "industry"  # optional context column: never enough on its own to code a row
ID = "id"  # optional: the row's identifier (passes through to the result like any other column)
ROLES = (TITLE, DUTIES, INDUSTRY, ID)  # the columns a coder can choose by hand (`mapped_header`)
DISPLACED_PREFIX = "input_"  # a column whose name a hand-chosen column takes over (as `result_header` does)
DELIMITERS = (",", ";", "\t")
SNIFF_BYTES = 64 * 1024
MAX_REPORTED_ROWS = 20  # ragged rows listed in one error; the count says how many there are in all

# Python's csv module refuses fields over 128 KiB by default; a duties text can be long, a whole file cannot.
csv.field_size_limit(16 * 1024 * 1024)

_UTF16_BOMS = (
    codecs.BOM_UTF32_LE,
    codecs.BOM_UTF32_BE,
    codecs.BOM_UTF16_LE,
    codecs.BOM_UTF16_BE,
)  # longest first
_HEADER_SEP = re.compile(r"[\s_\-.]+")


class CsvFormatError(ValueError):
    """A file that cannot be read as a job CSV. `code` is machine-readable, str(self) is for people.

    Codes: encoding, empty, no_rows, missing_columns, duplicate_columns, ragged_rows, too_many_rows,
    unknown_column (a column chosen by hand is not in the header); workbooks add not_a_workbook, no_sheet,
    too_large (`shared.csvio.workbook`).
    """

    def __init__(self, code: str, message: str, **details: Any):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def as_dict(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.details}


def normalise_header(name: str) -> str:
    """'  Job Title ' -> 'job_title': case, surrounding space and space/dash/dot runs do not matter."""
    return _HEADER_SEP.sub("_", name.replace("\ufeff", "").strip().lower()).strip("_")


@dataclass(frozen=True)
class CsvLayout:
    """What the header says about a file: encoding, delimiter, columns and where the text columns are."""

    encoding: str  # "utf-8-sig" (BOM) or "utf-8"
    delimiter: str
    header: list[str]  # as written in the file
    title_index: int | None
    duties_index: int | None
    industry_index: int | None = None
    id_index: int | None = None

    @property
    def width(self) -> int:
        return len(self.header)

    def texts(self, cells: Sequence[str]) -> tuple[str, str]:
        """The job title and duties of a data row (empty where the column is absent)."""
        title = cells[self.title_index] if self.title_index is not None else ""
        duties = cells[self.duties_index] if self.duties_index is not None else ""
        return title, duties

    def industry(self, cells: Sequence[str]) -> str:
        """The employer's industry of a data row ("" where the file has no industry column)."""
        return cells[self.industry_index] if self.industry_index is not None else ""


@dataclass
class CsvRow:
    """One data row. `number` counts data rows from 1; `line` is the file line where the row starts."""

    number: int
    line: int
    cells: list[str]
    error: str | None = None
    width: int = 0  # cells as written (differs from the header's width in a ragged row)


@dataclass
class ScanReport:
    """The result of checking a whole file: row count and the first ragged rows, if any."""

    rows: int = 0
    ragged: int = 0
    ragged_examples: list[dict[str, int]] = field(default_factory=list)


def _encoding_error(data: bytes, exc: UnicodeDecodeError, offset: int, lines_before: int) -> CsvFormatError:
    position = offset + exc.start
    line = lines_before + data[: exc.start].count(b"\n") + 1
    bad = data[exc.start : exc.start + 4]
    guess = guess_legacy_encoding(data[max(0, exc.start - 2000) : exc.start + 2000])
    where = f"line {line} (byte offset {position})"
    hint = f" It looks like {guess}." if guess else ""
    return CsvFormatError(
        "encoding",
        f"The file is not valid UTF-8: byte 0x{bad[:1].hex()} at {where} cannot be decoded.{hint} "
        'Save the file as UTF-8 ("CSV UTF-8" in Excel) and upload it again.',
        line=line,
        byte_offset=position,
        bad_bytes=bad.hex(),
        guessed_encoding=guess,
    )


# Windows-1252 letters and punctuation that Western European text uses (Latin-1 letters, curly quotes, dashes,
# euro, ellipsis); a sample whose non-ASCII characters under cp1252 are all of these is very likely cp1252.
_CP1252_TEXT = re.compile(
    r"[\x00-\x7f\u00a0-\u00ff\u2013\u2014\u2018\u2019\u201a\u201c\u201d\u201e\u2022\u2026\u20ac\u2122]*"
)


def guess_legacy_encoding(data: bytes) -> str | None:
    """A likely encoding of bytes that are not UTF-8, for the error message (None: no good guess).

    Windows-1252 is checked first: statistical detectors often call short Western European samples cp1250
    or another single-byte page, which would send the user to the wrong export setting.
    """
    try:
        if _CP1252_TEXT.fullmatch(data.decode("cp1252")):
            return 'Windows-1252 (Western European, what Excel writes as plain "CSV")'
    except UnicodeDecodeError:
        pass
    try:
        from charset_normalizer import from_bytes

        best = from_bytes(data).best()
    except Exception:  # the guess only decorates the message
        return None
    guess = best.encoding if best is not None else None
    return guess if guess and guess not in ("utf_8", "ascii") else None


def decode_head(sample: bytes, *, complete: bool) -> tuple[str, str]:
    """Decode the first bytes of a file: (text, encoding). Raises CsvFormatError naming the problem.

    `complete` says the sample is the whole file; otherwise a multi-byte character cut at the end is fine.
    """
    for bom in _UTF16_BOMS:
        if sample.startswith(bom):
            kind = "UTF-32" if len(bom) == 4 else "UTF-16"
            return_msg = (
                f"The file is {kind} (it starts with a {kind} byte order mark); only UTF-8 is accepted. "
                'Save the file as UTF-8 ("CSV UTF-8" in Excel) and upload it again.'
            )
            raise CsvFormatError("encoding", return_msg, detected_encoding=kind.lower())
    encoding = "utf-8-sig" if sample.startswith(codecs.BOM_UTF8) else "utf-8"
    body = sample[3:] if encoding == "utf-8-sig" else sample
    if b"\x00" in body[:4096]:
        raise CsvFormatError(
            "encoding",
            "The file contains NUL bytes: it is binary or UTF-16 without a byte order mark, not UTF-8 text. "
            "Save the file as UTF-8 CSV.",
        )
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        text = decoder.decode(body, final=complete)
    except UnicodeDecodeError as exc:
        raise _encoding_error(body, exc, 0, 0) from None
    return text, encoding


def _first_record(text: str, delimiter: str) -> list[str]:
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    for row in reader:
        if any(cell.strip() for cell in row):
            return row
    return []


def sniff_layout(
    sample: bytes,
    *,
    complete: bool = False,
    any_of: Sequence[str] = TEXT_COLUMNS,
    columns: Mapping[str, str] | None = None,
) -> CsvLayout:
    """Read encoding, delimiter and header from the first bytes of a file (`SNIFF_BYTES` is plenty).

    The delimiter is the one of comma, semicolon and tab under which the header names a column of `any_of`
    (default: the text columns), or the columns chosen by hand (`columns`, see `mapped_header`: the layout's
    header is then the renamed one); among several, the one giving more columns. Raises CsvFormatError
    (encoding, empty, missing_columns, duplicate_columns, unknown_column).
    """
    text, encoding = decode_head(sample, complete=complete)
    if not text.strip():
        raise CsvFormatError(
            "empty",
            "The file is empty: expected a header line with job_title and/or "
            "duties_description, then one row per job.",
        )
    first_line = text.split("\n", 1)[0]
    candidates = []
    for delimiter in DELIMITERS:
        header = _first_record(text if '"' in first_line else first_line, delimiter)
        names = [normalise_header(h) for h in header]
        wanted = [normalise_header(name) for name in columns.values()] if columns else any_of
        found = sum(1 for c in wanted if c in names)
        candidates.append((found, len(header), delimiter, header, names))
    found, _, delimiter, header, names = max(candidates, key=lambda c: (c[0], c[1]))
    if columns:
        header = mapped_header(header, columns)
    return header_layout(header, encoding=encoding, delimiter=delimiter, any_of=any_of)


def is_id_name(name: str) -> bool:
    """A header that names the row's identifier: "id", "ID", "respondent_id", "Person ID"."""
    normal = normalise_header(name)
    return normal == ID or normal.endswith("_" + ID)


def mapped_header(header: Sequence[str], columns: Mapping[str, str]) -> list[str]:
    """The header with the columns a coder chose by hand renamed to their role.

    `columns` maps a role of `ROLES` (job_title, duties_description, industry, id) to a header name as
    written (matched like every header: ignoring case and spaces). The chosen column takes the role's name;
    another column that already had that name is renamed `input_<name>`, so it no longer competes. Raises
    CsvFormatError (unknown_column) for a role that is not one of `ROLES` or a name the header does not have.
    """
    out = [h.replace("\ufeff", "").strip() for h in header]
    names = [normalise_header(h) for h in out]
    chosen: dict[int, str] = {}
    for role, name in columns.items():
        if role not in ROLES:
            raise CsvFormatError(
                "unknown_column", f"{role!r} is not a column role; roles are {', '.join(ROLES)}.", role=role
            )
        if normalise_header(name) not in names:
            raise CsvFormatError(
                "unknown_column",
                f"The column {name!r} chosen as {role} is not in the header. "
                f"Columns found: {', '.join(out[:30]) or '(none)'}.",
                role=role,
                column=name,
                found=out[:30],
            )
        at = names.index(normalise_header(name))
        if at in chosen and chosen[at] != role:
            raise CsvFormatError(
                "unknown_column",
                f"The column {name!r} is chosen as both {chosen[at]} and {role}; choose one role per column.",
                role=role,
                column=name,
            )
        chosen[at] = role
    for at, role in chosen.items():
        for i, name in enumerate(names):
            if i not in chosen and name == role:
                while normalise_header(out[i]) in {*names, *chosen.values()}:
                    out[i] = DISPLACED_PREFIX + out[i]
                names[i] = normalise_header(out[i])
        out[at] = role
        names[at] = role
    return out


def header_layout(
    header: Sequence[str],
    *,
    encoding: str = "utf-8",
    delimiter: str = ",",
    any_of: Sequence[str] = TEXT_COLUMNS,
) -> CsvLayout:
    """The layout of a header (CSV or a workbook's first row): where the text, industry and id columns are.
    Raises CsvFormatError (missing_columns, duplicate_columns)."""
    header = list(header)
    names = [normalise_header(h) for h in header]
    if not any(c in names for c in any_of):
        shown = [h.strip() for h in header][:30]
        wanted = ("neither " + " nor ".join(any_of)) if len(any_of) == 2 else "none of " + " / ".join(any_of)
        raise CsvFormatError(
            "missing_columns",
            f"The header has {wanted}; at least one is required "
            f"(names are matched ignoring case and spaces). Columns found: {', '.join(shown) or '(none)'}.",
            missing=list(any_of),
            required_any_of=list(any_of),
            found=shown,
        )
    for column in {*TEXT_COLUMNS, INDUSTRY, *any_of}:
        if names.count(column) > 1:
            raise CsvFormatError(
                "duplicate_columns",
                f"The header names {column} {names.count(column)} times; it must appear once.",
                duplicates=[column],
            )
    ids = [i for i, name in enumerate(names) if name == ID] or [
        i for i, h in enumerate(header) if is_id_name(h)
    ]
    return CsvLayout(
        encoding=encoding,
        delimiter=delimiter,
        header=header,
        title_index=names.index(TITLE) if TITLE in names else None,
        duties_index=names.index(DUTIES) if DUTIES in names else None,
        industry_index=names.index(INDUSTRY) if INDUSTRY in names else None,
        id_index=ids[0] if ids else None,
    )


def read_layout(path: Path, *, any_of: Sequence[str] = TEXT_COLUMNS) -> CsvLayout:
    """`sniff_layout` of a file on disk."""
    with open(path, "rb") as f:
        sample = f.read(SNIFF_BYTES + 1)
    return sniff_layout(sample[:SNIFF_BYTES], complete=len(sample) <= SNIFF_BYTES, any_of=any_of)


_LINE_END = re.compile(r"(?<=\n)|(?<=\r)(?!\n)")


class _CheckedLines:
    """Text lines of a UTF-8 byte stream, decoded strictly in blocks; a decoding error names line and offset.

    Lines end at LF, CRLF or CR only (str.splitlines would also split at U+2028 and other characters
    that are legitimate inside a field).
    """

    def __init__(self, raw: IO[bytes], encoding: str, block: int = 1 << 20):
        self._raw = raw
        self._decoder = codecs.getincrementaldecoder(encoding)("strict")
        self._block = block
        self._offset = 0
        self._lines = 0

    def __iter__(self) -> Iterator[str]:
        pending = ""
        while True:
            data = self._raw.read(self._block)
            final = not data
            try:
                text = self._decoder.decode(data, final=final)
            except UnicodeDecodeError as exc:
                raise _encoding_error(data, exc, self._offset, self._lines) from None
            self._offset += len(data)
            self._lines += data.count(b"\n")
            if text:
                lines = [part for part in _LINE_END.split(pending + text) if part]
                # a last line without its newline may continue in the next block
                pending = "" if lines[-1].endswith(("\n", "\r")) else lines.pop()
                # "\r" at a block edge may be the first half of "\r\n": hold it back
                if lines and lines[-1].endswith("\r") and not final:
                    pending = lines.pop() + pending
                yield from lines
            if final:
                if pending:
                    yield pending
                return


def iter_rows(path: Path, layout: CsvLayout | None = None) -> Iterator[CsvRow]:
    """Stream the data rows of a job CSV (header skipped, blank lines skipped).

    A row with more or fewer cells than the header is yielded with `error` set and its cells padded or cut
    to the header's width, so that callers can report it per row. Raises CsvFormatError on bad encoding.
    """
    layout = layout or read_layout(path)
    with open(path, "rb") as raw:
        reader = csv.reader(_CheckedLines(raw, layout.encoding), delimiter=layout.delimiter)
        header_seen = False
        number = 0
        consumed = 0
        for cells in reader:
            start_line, consumed = consumed + 1, reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if not header_seen:
                header_seen = True
                continue
            number += 1
            error = None
            width = len(cells)
            if width != layout.width:
                error = f"row has {width} fields, the header has {layout.width}"
                cells = (cells + [""] * layout.width)[: layout.width]
            yield CsvRow(number, start_line, cells, error, width)


def scan(path: Path, layout: CsvLayout | None = None, *, max_rows: int | None = None) -> ScanReport:
    """Check a whole file as an upload: count rows; raise CsvFormatError for bad encoding anywhere,
    ragged rows (the first `MAX_REPORTED_ROWS` listed with line numbers), no data rows, or more than
    `max_rows` rows."""
    layout = layout or read_layout(path)
    report = ScanReport()
    for row in iter_rows(path, layout):
        report.rows += 1
        if max_rows is not None and report.rows > max_rows:
            raise CsvFormatError(
                "too_many_rows",
                f"The file has more than {max_rows:,} rows, the limit for one upload; "
                "split it into smaller files.",
                max_rows=max_rows,
            )
        if row.error:
            report.ragged += 1
            if len(report.ragged_examples) < MAX_REPORTED_ROWS:
                report.ragged_examples.append({"row": row.number, "line": row.line, "fields": row.width})
    if report.ragged:
        lines = ", ".join(f"line {r['line']} ({r['fields']} fields)" for r in report.ragged_examples)
        more = (
            f" and {report.ragged - len(report.ragged_examples)} more"
            if report.ragged > MAX_REPORTED_ROWS
            else ""
        )
        raise CsvFormatError(
            "ragged_rows",
            f"{report.ragged} row(s) do not have the header's {layout.width} fields: {lines}{more}. "
            "Check for unquoted delimiters or line breaks inside fields.",
            expected_fields=layout.width,
            rows=report.ragged_examples,
            count=report.ragged,
        )
    if report.rows == 0:
        raise CsvFormatError("no_rows", "The file has a header but no data rows.")
    return report


def read_table(
    path: Path, *, any_of: Sequence[str] = TEXT_COLUMNS
) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """A whole CSV checked like an upload, then read as records: (normalised header names, (line, row) pairs
    keyed by those names). The reader for coded files (training data, corrections, evaluation sets), so they
    take the same encodings, delimiters and header spellings as uploads and fail with the same errors
    (CsvFormatError: encoding, empty, missing_columns, duplicate_columns, ragged_rows, no_rows)."""
    layout = read_layout(path, any_of=any_of)
    scan(path, layout)
    names = [normalise_header(h) for h in layout.header]

    def records() -> Iterator[tuple[int, dict[str, str]]]:
        for row in iter_rows(path, layout):
            yield row.line, dict(zip(names, row.cells, strict=True))

    return names, records()
