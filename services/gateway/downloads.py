"""A job's result as a download, for the API (`GET /jobs/{id}/result`) and the review page: the reviewed
result (`shared.review.exports.reviewed_rows`: the result's columns, then `final_code`, `coded_by` and
`final_status`, always present whatever the review state) as CSV or as an Excel workbook.

The workbook is built in a temporary file beside the job's results (openpyxl writes a zip, which cannot be
streamed as it is made) and deleted once sent.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

from fastapi.responses import FileResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.responses import Response

from shared.csvio.workbook import XLSX_MEDIA_TYPE
from shared.db.tables import Job, ReviewDecision
from shared.review.exports import iter_reviewed_csv, write_reviewed_xlsx

ResultFormat = Literal["csv", "xlsx"]


def csv_result(job: Job, decisions: dict[int, ReviewDecision], filename: str) -> Response:
    """The reviewed result CSV, streamed."""
    return StreamingResponse(
        iter_reviewed_csv(job, decisions),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"},
    )


def xlsx_result(job: Job, decisions: dict[int, ReviewDecision], filename: str) -> Response:
    """The reviewed result as an .xlsx (one sheet, every cell text). Built in the calling thread: the routes
    that send it are plain `def`s, which FastAPI runs in its thread pool."""
    folder = Path(job.result_path or "").parent
    fd, name = tempfile.mkstemp(prefix=".download-", suffix=".xlsx", dir=folder)
    os.close(fd)
    path = Path(name)
    try:
        write_reviewed_xlsx(job, decisions, path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return FileResponse(
        path,
        media_type=XLSX_MEDIA_TYPE,
        filename=filename,
        content_disposition_type="attachment",
        headers={"Cache-Control": "no-store"},
        background=BackgroundTask(path.unlink, missing_ok=True),
    )


def result_download(job: Job, decisions: dict[int, ReviewDecision], fmt: ResultFormat, stem: str) -> Response:
    """The reviewed result in `fmt`, named `<stem>.csv` or `<stem>.xlsx`."""
    if fmt == "xlsx":
        return xlsx_result(job, decisions, f"{stem}.xlsx")
    return csv_result(job, decisions, f"{stem}.csv")
