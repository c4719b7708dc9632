"""Uploading a file on the review page: preview, then submit; and the job list's live progress.

    POST /review/upload/preview     multipart `file` (+ query: sheet, title_column, duties_column,
                                    industry_column, id_column) -> what the file holds: its columns, the
                                    column found for each role, rows, sheets, notes; nothing is kept
    POST /review/upload             the same -> a queued job (the same path as POST /predict/csv)
    GET  /review/progress?ids=      status and rows done of the key's jobs, for the list to poll

The page (static/upload.js) previews the file as soon as it is chosen, shows the columns found and lets the
coder choose a column by hand when a header is not recognised, then submits the same file with the same
choices; every problem comes back as the API's error detail (`error`, `message`, and for a header problem the
columns found) and is shown on the page. Both POSTs need the session's CSRF token (X-CSRF-Token header).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from services.gateway.deps import SessionDep
from services.gateway.jobs import job_settings, queue_upload
from services.gateway.review import session as web
from services.gateway.review.descriptions import job_name
from services.gateway.review.session import ReviewerDep
from services.gateway.staging import StagedInput, UploadChoices, stage_upload
from shared.jobs.settings import JobSettings
from shared.jobs.state import owned_job

router = APIRouter(prefix="/review", include_in_schema=False)

MAX_POLLED = 50
PREVIEW_COLUMNS = 200  # a header wider than this is listed in part (the mapping menus stay usable)


Choice = Annotated[str | None, Query(max_length=200)]


def _choices(
    sheet: Choice = None,
    title_column: Choice = None,
    duties_column: Choice = None,
    industry_column: Choice = None,
    id_column: Choice = None,
) -> UploadChoices:
    """The coder's choices (query parameters, as on POST /predict/csv): the sheet and columns by hand."""
    return UploadChoices.of(sheet, title_column, duties_column, industry_column, id_column)


ChoicesDep = Annotated[UploadChoices, Depends(_choices)]


def upload_limits(settings: JobSettings) -> dict[str, int]:
    """The limits the upload card states (and checks before sending: the size)."""
    return {
        "bytes": settings.job_max_upload_bytes,
        "megabytes": max(1, settings.job_max_upload_bytes // (1024 * 1024)),
        "rows": settings.job_max_rows,
    }


def _summary(staged: StagedInput) -> dict[str, Any]:
    return {
        "filename": staged.filename,
        "format": staged.format,
        "bytes": staged.size,
        "rows": staged.rows,
        "columns": staged.layout.header[:PREVIEW_COLUMNS],
        "found": staged.found(),
        "sheet": staged.sheet,
        "sheets": staged.sheets,
        "notes": staged.notes,
    }


@router.post("/upload/preview", name="review_upload_preview")
async def preview(request: Request, current: ReviewerDep, choices: ChoicesDep) -> JSONResponse:
    """Check the file as a submission would, keep nothing, and say what it holds."""
    web.check_csrf(request, current.csrf, None)
    staged = await stage_upload(request, job_settings(request), None, choices)
    return JSONResponse(_summary(staged), headers={"Cache-Control": "no-store"})


@router.post("/upload", name="review_upload")
async def submit(request: Request, current: ReviewerDep, choices: ChoicesDep) -> JSONResponse:
    """Queue the file as a job of the signed-in key (the options of a default API upload: top 5)."""
    web.check_csrf(request, current.csrf, None)
    job, staged = await queue_upload(
        request, current.principal, choices, {"top_k": 5, "thresholds": None, "source": "review_page"}
    )
    body = _summary(staged) | {"job_id": job.id, "name": job_name(job), "status": job.status}
    return JSONResponse(body, status_code=202, headers={"Cache-Control": "no-store"})


@router.get("/progress", name="review_progress")
def progress(
    session: SessionDep,
    current: ReviewerDep,
    ids: Annotated[str, Query(max_length=MAX_POLLED * 40)] = "",
) -> JSONResponse:
    """The status and progress of the key's jobs named in `ids` (comma-separated); others are left out."""
    wanted = [i for i in ids.split(",") if i][:MAX_POLLED]
    out = []
    for job_id in wanted:
        job = owned_job(session, job_id, current.principal.key_id)
        if job is not None:
            out.append(
                {
                    "job_id": job.id,
                    "status": job.status,
                    "rows_done": job.rows_done,
                    "rows_total": job.rows_total,
                }
            )
    return JSONResponse(out, headers={"Cache-Control": "no-store"})
