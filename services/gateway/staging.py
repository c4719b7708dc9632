"""An uploaded file becomes a job's input CSV: the one path for `POST /predict/csv` and the review page's
upload (its preview and its submission).

A CSV is kept as sent (checked whole by `shared.csvio.reading.scan`); when the caller chose columns by hand,
its header is rewritten with the chosen columns renamed (`reading.mapped_header`), so the worker, the review
page and the result read it like any other. A workbook's sheet is converted to a UTF-8 CSV
(`shared.csvio.workbook`), so a job never holds a workbook. The input appears at `dest` only once it has
passed every check; on any failure nothing is left behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from services.gateway.uploads import csv_error, receive_csv
from shared.csvio.reading import DUTIES, ID, INDUSTRY, TITLE, CsvFormatError, CsvLayout, scan
from shared.csvio.workbook import workbook_to_csv
from shared.csvio.writing import copy_with_header
from shared.jobs.settings import JobSettings
from shared.jobs.state import new_job_id


@dataclass(frozen=True)
class UploadChoices:
    """What the caller chose about an upload: the workbook's sheet, and columns by role (role -> header)."""

    sheet: str | None = None
    columns: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        sheet: str | None = None,
        title_column: str | None = None,
        duties_column: str | None = None,
        industry_column: str | None = None,
        id_column: str | None = None,
    ) -> UploadChoices:
        chosen = {TITLE: title_column, DUTIES: duties_column, INDUSTRY: industry_column, ID: id_column}
        return cls(
            sheet=sheet.strip() if sheet and sheet.strip() else None,
            columns={role: name.strip() for role, name in chosen.items() if name and name.strip()},
        )


@dataclass
class StagedInput:
    """An upload that passed every check: where its CSV is, what it holds."""

    path: Path | None  # None for a preview (nothing kept)
    filename: str | None
    size: int
    format: str  # "csv" or "xlsx"
    layout: CsvLayout
    rows: int
    sheet: str | None = None
    sheets: list[str] | None = None
    notes: list[str] = field(default_factory=list)  # what the coder should know (formula cells)

    def options(self, choices: UploadChoices) -> dict[str, Any]:
        """What the job row records about its input (shown on the review page's job list)."""
        out: dict[str, Any] = {"filename": self.filename, "bytes": self.size}
        if self.format != "csv":
            out |= {"format": self.format, "sheet": self.sheet, "sheets": self.sheets}
        if choices.columns:
            out["columns"] = choices.columns
        return out

    def found(self) -> dict[str, str | None]:
        """The column found for each role (the header as the job will have it), None where there is none."""
        at = {
            TITLE: self.layout.title_index,
            DUTIES: self.layout.duties_index,
            INDUSTRY: self.layout.industry_index,
            ID: self.layout.id_index,
        }
        return {role: None if i is None else self.layout.header[i] for role, i in at.items()}


async def stage_upload(
    request: Request, settings: JobSettings, dest: Path | None, choices: UploadChoices
) -> StagedInput:
    """Receive the request's multipart `file` and check it whole (a CSV, or a workbook's chosen sheet); the
    job input CSV is then at `dest` (None: a preview, nothing is kept). Raises HTTPException with the
    problem (413, 415, 422: `uploads.receive_csv`, `shared.csvio`)."""
    spool = dest if dest is not None else settings.uploads_dir / f"preview-{new_job_id()}.csv"
    partial = spool.with_name(spool.name + ".uploading")
    received = await receive_csv(
        request, partial, max_bytes=settings.job_max_upload_bytes, columns=choices.columns
    )
    try:
        if received.layout is None:
            book = await run_in_threadpool(
                workbook_to_csv, partial, dest, sheet=choices.sheet, columns=choices.columns,
                max_rows=settings.job_max_rows, max_bytes=settings.job_max_upload_bytes,
            )  # fmt: skip
            note = book.formula_note()
            return StagedInput(dest, received.filename, received.size, "xlsx", book.layout, book.rows,
                               book.sheet, book.sheets, [note] if note else [])  # fmt: skip
        report = await run_in_threadpool(scan, partial, received.layout, max_rows=settings.job_max_rows)
        if dest is not None:
            if choices.columns:
                await run_in_threadpool(copy_with_header, partial, dest, received.layout)
            else:
                partial.replace(dest)
        return StagedInput(dest, received.filename, received.size, "csv", received.layout, report.rows)
    except CsvFormatError as exc:
        if dest is not None:
            dest.unlink(missing_ok=True)
        raise csv_error(exc) from None
    finally:
        partial.unlink(missing_ok=True)
