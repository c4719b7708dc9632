"""Excel workbooks (.xlsx) in and out: one sheet read as a job's input, a result written as a workbook.

In: the sheet (the first, or one chosen by name) is streamed with openpyxl (`read_only=True`,
`data_only=True`) into a UTF-8 CSV, and from there the job is a CSV job like any other (`reading.py` reads it:
the worker, the review page and the result never see the workbook). A formula cell is read as the value the
spreadsheet saved with it and never run; the formulas are counted (from the sheet's XML, which `data_only`
hides) so the coder can be told. The first non-blank row is the header, matched like a CSV header
(`reading.header_layout`, columns chosen by hand with `reading.mapped_header`); blank rows are skipped.

Out: `write_xlsx` writes result rows (already neutralised by `writing.result_row`) as text cells, so a
leading-zero code such as 0110 stays 0110 and no cell is ever a formula.
"""

from __future__ import annotations

import datetime as dt
import re
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.csvio.reading import MAX_REPORTED_ROWS, TEXT_COLUMNS, CsvFormatError, CsvLayout, header_layout
from shared.csvio.reading import mapped_header as rename_chosen
from shared.csvio.writing import format_row

XLSX_MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
XLSX_SUFFIX = ".xlsx"
_ZIP_MAGIC = b"PK\x03\x04"
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # .xls (Excel 97-2003) and password-protected workbooks
FORMULA_CELLS_SHOWN = 5
# a formula is an <f> element inside a cell (any namespace prefix); its reference: the <c r="..."> before
_FORMULA = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?f[\s>/]")
_CELL_REF = re.compile(rb'<(?:[A-Za-z_][\w.-]*:)?c\b[^>]*?\sr="([A-Z]{1,3}[0-9]{1,7})"[^>]*>$')
_CELL_LOOKBACK = 400
SAVE_AS = 'Save it as an Excel Workbook (.xlsx) or as "CSV UTF-8" and upload it again.'


@dataclass
class WorkbookInput:
    """What reading one sheet found: the sheet, the others, the CSV's layout and rows, the formula cells."""

    sheet: str
    sheets: list[str]
    layout: CsvLayout  # of the CSV written (UTF-8, comma); its header is the sheet's, renamed where chosen
    rows: int = 0
    formulas: int = 0
    formula_cells: list[str] = field(default_factory=list)  # the first few, as A1 references

    def formula_note(self) -> str | None:
        """A sentence for the coder about formula cells (None when the sheet has none)."""
        if not self.formulas:
            return None
        where = ", ".join(self.formula_cells) + (" ..." if self.formulas > len(self.formula_cells) else "")
        return (
            f"{self.formulas} cell(s) hold a formula ({where}): the value the spreadsheet saved with each "
            "was read; formulas are never run (a formula never calculated by a spreadsheet reads as empty)."
        )


def is_workbook(head: bytes, filename: str | None = None, content_type: str | None = None) -> bool:
    """Whether an upload is meant as a workbook: its bytes (a zip, or the old .xls container), its name
    (.xlsx, .xls) or its declared type. `workbook_to_csv` then opens it or says clearly why it cannot."""
    name = (filename or "").lower()
    ctype = (content_type or "").split(";")[0].strip().lower()
    return (
        head.startswith((_ZIP_MAGIC, _OLE_MAGIC))
        or name.endswith((XLSX_SUFFIX, ".xls", ".xlsm"))
        or ctype in (XLSX_MEDIA_TYPE, "application/vnd.ms-excel")
    )


@contextmanager
def _opened(path: Path, max_unpacked_bytes: int | None) -> Iterator[Any]:
    """The workbook, read-only with saved values; closed (with its file) on leaving."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        raise CsvFormatError(
            "empty", "The file is empty: expected a workbook whose first sheet has a header row."
        )
    if head.startswith(_OLE_MAGIC):
        raise CsvFormatError(
            "not_a_workbook",
            "The file is an Excel 97-2003 workbook (.xls) or a password-protected one, which cannot be "
            f"read. {SAVE_AS}",
        )
    if not head.startswith(_ZIP_MAGIC):
        raise CsvFormatError(
            "not_a_workbook", f"The file is named or typed as a workbook but is not one. {SAVE_AS}"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile as exc:
        raise CsvFormatError("not_a_workbook", f"The workbook is damaged ({exc}). {SAVE_AS}") from None
    if max_unpacked_bytes is not None and unpacked > max_unpacked_bytes:
        raise CsvFormatError(
            "too_large",
            f"The workbook unpacks to {unpacked:,} bytes, more than the limit of {max_unpacked_bytes:,}; "
            "split it into smaller files.",
            max_bytes=max_unpacked_bytes,
        )
    from openpyxl import load_workbook  # the gateway imports this module; openpyxl loads only when needed

    # a file object, not the path: openpyxl would refuse a name without .xlsx (an upload's spool file)
    with open(path, "rb") as source:
        try:
            with warnings.catch_warnings():  # openpyxl warns about styles and extensions it does not read
                warnings.simplefilter("ignore")
                workbook = load_workbook(source, read_only=True, data_only=True)
        except (
            Exception
        ) as exc:  # openpyxl raises KeyError, ValueError, InvalidFileException ... on bad files
            raise CsvFormatError(
                "not_a_workbook", f"The file is not a readable .xlsx workbook ({exc}). {SAVE_AS}"
            ) from None
        try:
            yield workbook
        finally:
            workbook.close()


def sheet_names(path: Path) -> list[str]:
    """The names of a workbook's worksheets, in order."""
    with _opened(path, None) as workbook:
        return [ws.title for ws in workbook.worksheets]


def cell_text(value: object) -> str:
    """A cell's value as the CSV text a spreadsheet would show: 12 (not 12.0), 2024-05-01, TRUE."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat(sep=" ")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)


def _choose_sheet(workbook: Any, sheet: str | None) -> Any:
    sheets = workbook.worksheets
    if not sheets:
        raise CsvFormatError("no_sheet", "The workbook has no worksheet.", sheets=[])
    if sheet is None or not sheet.strip():
        return sheets[0]
    for wanted in (lambda t: t == sheet, lambda t: t.strip().lower() == sheet.strip().lower()):
        for ws in sheets:
            if wanted(ws.title):
                return ws
    names = [ws.title for ws in sheets]
    raise CsvFormatError(
        "no_sheet",
        f"The workbook has no sheet named {sheet!r}; its sheets are: {', '.join(names)}.",
        sheet=sheet,
        sheets=names,
    )


def _count_formulas(workbook: Any, ws: Any) -> tuple[int, list[str]]:
    """Formula cells of a sheet, from its XML (openpyxl with data_only shows only their saved values)."""
    count, refs = 0, list[str]()
    keep = 32  # an element name cut at a block edge is matched in the next block
    tail = b""
    with workbook._archive.open(ws._worksheet_path) as src:  # openpyxl's read-only sheet: its zip member
        while True:
            block = src.read(1 << 20)
            buf = tail + block
            limit = len(buf) if not block else len(buf) - keep
            for match in _FORMULA.finditer(buf):
                if match.start() >= limit:
                    break
                count += 1
                if len(refs) < FORMULA_CELLS_SHOWN:
                    cell = _CELL_REF.search(buf, max(0, buf.rfind(b"<", 0, match.start() - 1)), match.start())
                    if cell:
                        refs.append(cell.group(1).decode())
            if not block:
                return count, refs
            tail = buf[limit:]


def workbook_to_csv(
    source: Path,
    dest: Path | None,
    *,
    sheet: str | None = None,
    columns: Mapping[str, str] | None = None,
    max_rows: int | None = None,
    max_bytes: int | None = None,
    any_of: Sequence[str] = TEXT_COLUMNS,
) -> WorkbookInput:
    """Read one sheet of an .xlsx (the first, or `sheet` by name) and write it to `dest` as a UTF-8 CSV
    (None: only check and count, for a preview). `columns` are chosen by hand (`reading.mapped_header`).

    Checked like a CSV upload: CsvFormatError empty, missing_columns (naming the workbook's sheets when it
    has several), duplicate_columns, unknown_column, ragged_rows (values right of the header), no_rows,
    too_many_rows (over `max_rows`), too_large (the CSV over `max_bytes`, or the workbook unpacking to more
    than ten times that), not_a_workbook, no_sheet. `dest` is left absent on failure.
    """
    with _opened(source, 10 * max_bytes if max_bytes else None) as workbook:
        ws = _choose_sheet(workbook, sheet)
        names = [w.title for w in workbook.worksheets]
        ws.reset_dimensions()  # the stored dimensions can be wrong (some writers leave A1:A1): read every row
        out = open(dest, "w", encoding="utf-8", newline="") if dest is not None else None
        try:
            found = _copy_rows(ws, out, names, chosen=sheet, columns=columns, any_of=any_of,
                               max_rows=max_rows, max_bytes=max_bytes)  # fmt: skip
            found.formulas, found.formula_cells = _count_formulas(workbook, ws)
        except BaseException:
            if out is not None:
                out.close()
                dest.unlink(missing_ok=True)  # type: ignore[union-attr]
            raise
        if out is not None:
            out.close()
        return found


def _copy_rows(
    ws: Any,
    out: Any,
    sheets: list[str],
    *,
    chosen: str | None,
    columns: Mapping[str, str] | None,
    any_of: Sequence[str],
    max_rows: int | None,
    max_bytes: int | None,
) -> WorkbookInput:
    layout: CsvLayout | None = None
    found: WorkbookInput | None = None
    written = 0
    ragged: list[tuple[int, int]] = []  # (sheet row, columns used)
    ragged_count = 0
    for sheet_row, values in enumerate(ws.iter_rows(values_only=True), start=1):
        cells = [cell_text(v) for v in values]
        if not any(c.strip() for c in cells):
            continue
        if layout is None:
            width = max(i for i, c in enumerate(cells) if c.strip()) + 1
            header = cells[:width]
            try:
                layout = header_layout(rename_chosen(header, columns) if columns else header, any_of=any_of)
            except CsvFormatError as exc:
                raise _sheet_error(exc, ws.title, sheets, chosen) from None
            found = WorkbookInput(sheet=ws.title, sheets=sheets, layout=layout)
            line = format_row(layout.header)
        else:
            assert found is not None
            found.rows += 1
            if max_rows is not None and found.rows > max_rows:
                raise CsvFormatError(
                    "too_many_rows",
                    f"The sheet {ws.title!r} has more than {max_rows:,} rows, the limit for one upload; "
                    "split it into smaller files.",
                    max_rows=max_rows,
                )
            width = layout.width
            if any(c.strip() for c in cells[width:]):
                ragged_count += 1
                if len(ragged) < MAX_REPORTED_ROWS:
                    ragged.append((sheet_row, max(i for i, c in enumerate(cells) if c.strip()) + 1))
            line = format_row((cells + [""] * width)[:width])
        written += len(line.encode("utf-8"))
        if max_bytes is not None and written > max_bytes:
            raise CsvFormatError(
                "too_large",
                f"The sheet {ws.title!r} holds more than {max_bytes:,} bytes of text, the upload limit; "
                "split it into smaller files.",
                max_bytes=max_bytes,
            )
        if out is not None:
            out.write(line)
    if found is None:
        raise _sheet_error(
            CsvFormatError(
                "empty",
                f"The sheet {ws.title!r} is empty: expected a header row with job_title and/or "
                "duties_description, then one row per job.",
            ),
            ws.title,
            sheets,
            chosen,
        )
    if ragged_count:
        shown = ", ".join(f"row {r} ({n} columns)" for r, n in ragged)
        more = f" and {ragged_count - len(ragged)} more" if ragged_count > len(ragged) else ""
        raise CsvFormatError(
            "ragged_rows",
            f"{ragged_count} row(s) of the sheet {ws.title!r} have values right of the header's "
            f"{found.layout.width} columns: {shown}{more}. Give those columns a header or clear them.",
            expected_fields=found.layout.width,
            rows=[{"row": r, "fields": n} for r, n in ragged],
            count=ragged_count,
        )
    if found.rows == 0:
        raise CsvFormatError("no_rows", f"The sheet {ws.title!r} has a header but no data rows.")
    return found


def _sheet_error(exc: CsvFormatError, title: str, sheets: list[str], chosen: str | None) -> CsvFormatError:
    """A header problem of the first sheet, when no sheet was chosen in a workbook of several: say which
    sheet was read and name the others, so the coder can choose one."""
    details = {**exc.details, "sheet": title, "sheets": sheets}
    if chosen or len(sheets) < 2:
        return CsvFormatError(exc.code, exc.message, **details)
    message = (
        f"{exc.message} This is the first sheet, {title!r}, of a workbook with {len(sheets)} sheets "
        f"({', '.join(sheets)}): choose the sheet to read."
    )
    return CsvFormatError(exc.code, message, **details)


def write_xlsx(rows: Iterable[Sequence[str]], dest: Path, sheet: str = "result") -> int:
    """Write rows (header first, cells already neutralised) to an .xlsx, every cell as text; returns the
    number of data rows. Characters that XML cannot hold (control characters) are dropped."""
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    workbook = Workbook(write_only=True)
    ws = workbook.create_sheet(sheet)
    n = -1
    for row in rows:
        out = []
        for value in row:
            cell = WriteOnlyCell(ws, value=ILLEGAL_CHARACTERS_RE.sub("", value))
            cell.data_type = "s"  # text, never a formula (openpyxl would make "=..." one)
            out.append(cell)
        ws.append(out)
        n += 1
    workbook.save(dest)
    return max(n, 0)
