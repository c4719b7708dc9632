"""Jobs: CSV uploads and over-size batches become queued jobs that Celery workers process.

    POST   /predict/csv            multipart field `file` -> 202 {job_id, status_url, result_url}
    GET    /jobs                   the caller's jobs, newest first
    GET    /jobs/{id}              status, rows_total, rows_done, rows_failed, model_version, error, ...
    GET    /jobs/{id}/result       the result CSV (streamed); batch jobs: JSON, or CSV with Accept: text/csv
    DELETE /jobs/{id}              cancel

A key sees only its own jobs: any other id answers 404, like one that does not exist. The job row is committed
before the task is sent (by name, through a thin Celery client: the gateway never imports the worker code or
torch), so a worker never looks for a row that is not there yet.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from services.gateway.auth import Principal
from services.gateway.deps import ApiKeyDep, SessionDep
from services.gateway.downloads import result_download
from services.gateway.staging import StagedInput, UploadChoices, stage_upload
from services.gateway.uploads import upload_error
from services.worker.client import send_job
from shared.csvio.workbook import XLSX_MEDIA_TYPE
from shared.db.session import transaction
from shared.db.tables import Job, JobStatus
from shared.files import atomic_open
from shared.jobs.files import JobKind, input_path
from shared.jobs.settings import JobSettings
from shared.jobs.state import cancel, create_job, fail, new_job_id, owned_job, sweep_expired
from shared.jobs.state import list_jobs as owned_jobs
from shared.jobs.views import JobAccepted, JobView
from shared.review.decisions import decisions_for_job
from shared.review.exports import iter_batch_json, iter_csv_job_json
from shared.review.results import BATCH_INDUSTRY_OPTION
from shared.schemas import PredictRequest, Thresholds
from shared.settings import CommonSettings

log = logging.getLogger(__name__)

router = APIRouter(tags=["jobs"])

SWEEP_EVERY_S = 600.0
NOT_FOUND = HTTPException(404, detail={"error": "not_found", "message": "no such job"})

JOB_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid API key"},
    404: {"description": "no such job for this key"},
}
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid API key"},
    413: {
        "description": "file larger than the upload limit (a workbook: its text), or more rows than "
        "the row limit"
    },
    415: {"description": "not a multipart/form-data upload"},
    422: {
        "description": "the file cannot be coded: `error` is encoding, empty, no_rows, missing_columns, "
        "duplicate_columns, ragged_rows, unknown_column, not_a_workbook, no_sheet or missing_file; "
        "`message` says what to fix"
    },
    503: {"description": "the job queue is unavailable"},
}


# ----------------------------------------------------------------------------------------------------
# Settings, queue client
# ----------------------------------------------------------------------------------------------------


def job_settings(request: Request) -> JobSettings:
    """The job limits: the gateway's settings when they include them, else the same values plus ISCO_JOB_*."""
    state = request.app.state
    cached = getattr(state, "job_settings", None)
    if cached is None:
        base = state.settings
        if isinstance(base, JobSettings):
            cached = base
        else:
            cached = JobSettings(**{name: getattr(base, name) for name in CommonSettings.model_fields})
        state.job_settings = cached
    return cached


def _enqueue_committed(request: Request, settings: JobSettings, job: Job) -> None:
    """Commit the row, then send the task; if the queue is down, the job is marked failed and we say 503."""
    try:
        send_job(settings, job.id)
    except Exception as exc:
        log.error("could not enqueue job %s: %s", job.id, exc)
        with transaction(request.app.state.session_factory) as session:
            fail(session, job.id, f"could not be queued: {exc}", settings)
        raise HTTPException(
            503,
            detail={
                "error": "queue_unavailable",
                "message": "the job queue (Redis) is unavailable; the job was not queued, submit it again",
                "dependency": "broker",
            },
            headers={"Retry-After": "5"},
        ) from None


def _urls(request: Request, job_id: str) -> tuple[str, str]:
    return (
        str(request.url_for("get_job", job_id=job_id)),
        str(request.url_for("get_job_result", job_id=job_id)),
    )


def _accepted(
    request: Request, job: Job, settings: JobSettings, extra: dict[str, Any] | None = None
) -> JSONResponse:
    status_url, result_url = _urls(request, job.id)
    body = JobAccepted(
        job_id=job.id,
        status=job.status,
        rows_total=job.rows_total,
        status_url=status_url,
        result_url=result_url,
        **(extra or {}),
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=202,
        headers={"Location": status_url},
        background=BackgroundTask(_maybe_sweep, request, settings),
    )


def _maybe_sweep(request: Request, settings: JobSettings) -> None:
    """Delete expired uploads and results, at most every SWEEP_EVERY_S per process (workers sweep too)."""
    state = request.app.state
    now = time.monotonic()
    if now - getattr(state, "jobs_last_sweep", 0.0) < SWEEP_EVERY_S:
        return
    state.jobs_last_sweep = now
    try:
        with transaction(state.session_factory) as session:
            sweep_expired(session, settings)
    except Exception:  # housekeeping never fails a request
        log.exception("sweeping expired jobs failed")


def _options(top_k: int, thresholds: Thresholds | None) -> dict[str, Any]:
    return {"top_k": top_k, "thresholds": thresholds.model_dump() if thresholds else None}


# ----------------------------------------------------------------------------------------------------
# Submitting
# ----------------------------------------------------------------------------------------------------

MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "UTF-8 CSV (comma, semicolon or tab), or an Excel workbook "
                            "(.xlsx: the first sheet, or `sheet`), with job_title and/or "
                            "duties_description, optionally industry (the employer's main activity, e.g. "
                            "'paper manufacturing') and an id; other columns are kept in the result",
                        }
                    },
                }
            }
        },
    }
}


@router.post(
    "/predict/csv",
    status_code=202,
    response_model=JobAccepted,
    responses=UPLOAD_ERRORS,
    openapi_extra=MULTIPART_BODY,
    summary="Code a CSV file as a job",
)
async def predict_csv(
    request: Request,
    principal: ApiKeyDep,
    top_k: Annotated[
        int, Query(ge=1, le=20, description="alternatives per row (top_codes has at most 5)")
    ] = 5,
    unit_threshold: Annotated[float | None, Query(ge=0, le=1, description="4-digit threshold")] = None,
    minor_threshold: Annotated[float | None, Query(ge=0, le=1)] = None,
    sub_major_threshold: Annotated[float | None, Query(ge=0, le=1)] = None,
    major_threshold: Annotated[float | None, Query(ge=0, le=1)] = None,
    sheet: Annotated[
        str | None,
        Query(max_length=200, description="workbooks: the sheet to read, by name (default: the first)"),
    ] = None,
    title_column: Annotated[
        str | None,
        Query(
            max_length=200,
            description="the column that holds the job title, when its header "
            "is not job_title (it is renamed job_title in the result)",
        ),
    ] = None,  # fmt: skip
    duties_column: Annotated[
        str | None, Query(max_length=200, description="the duties column, by header")
    ] = None,
    industry_column: Annotated[
        str | None, Query(max_length=200, description="the industry column, by header")
    ] = None,
    id_column: Annotated[
        str | None, Query(max_length=200, description="the row id column, by header")
    ] = None,
) -> Response:
    """Upload a CSV or an Excel workbook (.xlsx; multipart field `file`); it is checked as it streams in and
    queued as a job. A workbook's first sheet is read unless `sheet` names another; the answer names the
    sheet read and all the sheets, and says when formula cells were read as their saved values.

    The result has the input columns, then isco_code, level, title, confidence, is_fallback, unit_code,
    unit_confidence, top_codes, top_confidences, needs_review, review_reasons and row_error.
    """
    settings = job_settings(request)
    given = {
        "unit": unit_threshold,
        "minor": minor_threshold,
        "sub_major": sub_major_threshold,
        "major": major_threshold,
    }
    thresholds = (
        Thresholds(**{k: v for k, v in given.items() if v is not None})
        if any(v is not None for v in given.values())
        else None
    )
    choices = UploadChoices.of(sheet, title_column, duties_column, industry_column, id_column)
    job, staged = await queue_upload(request, principal, choices, _options(top_k, thresholds))
    extra = {"sheet": staged.sheet, "sheets": staged.sheets, "notes": staged.notes or None}
    return _accepted(request, job, settings, {k: v for k, v in extra.items() if v is not None})


async def queue_upload(
    request: Request, principal: Principal, choices: UploadChoices, options: dict[str, Any]
) -> tuple[Job, StagedInput]:
    """An uploaded CSV or workbook, checked whole, becomes a queued job (the API's /predict/csv and the review
    page's upload). Raises HTTPException naming the problem; nothing is left behind on failure."""
    settings = job_settings(request)
    job_id = new_job_id()
    final = input_path(settings, job_id, "csv")
    staged = await stage_upload(request, settings, final, choices)
    options = options | staged.options(choices)
    try:
        job = await run_in_threadpool(
            _create, request, settings, job_id, "csv", principal, final, staged.rows, options
        )
    except Exception:
        final.unlink(missing_ok=True)  # no row points at it: nothing would ever delete it
        raise
    await run_in_threadpool(_enqueue_committed, request, settings, job)
    log.info("%s job %s queued: %d rows, %d bytes", staged.format, job_id, staged.rows, staged.size)
    return job, staged


def _create(
    request: Request,
    settings: JobSettings,
    job_id: str,
    kind: JobKind,
    principal: Principal,
    input_file: Path,
    rows: int,
    options: dict[str, Any],
) -> Job:
    # its own transaction, committed before the task is sent: the worker must find the row
    with transaction(request.app.state.session_factory) as session:
        job = create_job(
            session,
            job_id=job_id,
            kind=kind,
            owner_key_id=principal.key_id,
            input_file=input_file,
            rows_total=rows,
            options=options,
            settings=settings,
        )
    return job


async def submit_batch_job(request: Request, body: PredictRequest, principal: Principal) -> Response:
    """A /predict/batch above the synchronous limit: the records become a job (202 + job URL).

    The result (GET /jobs/{id}/result) is {"job_id", "model_version", "results": [...]} in input order, or the
    CSV form with Accept: text/csv.
    """
    settings = job_settings(request)
    if len(body.records) > settings.job_max_rows:
        raise upload_error(
            413,
            "too_many_rows",
            f"{len(body.records):,} records is more than the job limit of {settings.job_max_rows:,}.",
            max_rows=settings.job_max_rows,
        )
    job_id = new_job_id()
    path = input_path(settings, job_id, "batch")
    await run_in_threadpool(_write_records, path, body)
    options = _options(body.top_k, body.thresholds)
    if any(record.industry.strip() for record in body.records):
        options[BATCH_INDUSTRY_OPTION] = True  # the CSV form of the result gains an industry column
    job = await run_in_threadpool(
        _create, request, settings, job_id, "batch", principal, path, len(body.records), options
    )
    await run_in_threadpool(_enqueue_committed, request, settings, job)
    log.info("batch job %s queued: %d records", job_id, len(body.records))
    return _accepted(request, job, settings)


def _write_records(path: Path, body: PredictRequest) -> None:
    with atomic_open(path) as f:
        for record in body.records:
            f.write(record.model_dump_json())
            f.write("\n")


# ----------------------------------------------------------------------------------------------------
# Reading, cancelling
# ----------------------------------------------------------------------------------------------------


def _owned(session: Any, job_id: str, principal: Principal) -> Job:
    job = owned_job(session, job_id, principal.key_id)
    if job is None:
        raise NOT_FOUND
    return job


def _view(request: Request, job: Job) -> JobView:
    status_url, result_url = _urls(request, job.id)
    return JobView.of(job, status_url, result_url)


@router.get(
    "/jobs", response_model=list[JobView], responses={401: JOB_ERRORS[401]}, summary="The caller's jobs"
)
def list_jobs(
    request: Request,
    session: SessionDep,
    principal: ApiKeyDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    status: Annotated[JobStatus | None, Query(description="only jobs in this status")] = None,
) -> list[JobView]:
    return [_view(request, job) for job in owned_jobs(session, principal.key_id, limit, status)]


@router.get("/jobs/{job_id}", response_model=JobView, responses=JOB_ERRORS, summary="Job status and progress")
def get_job(request: Request, job_id: str, session: SessionDep, principal: ApiKeyDep) -> JobView:
    return _view(request, _owned(session, job_id, principal))


@router.delete(
    "/jobs/{job_id}",
    response_model=JobView,
    responses={**JOB_ERRORS, 409: {"description": "the job had already ended"}},
    summary="Cancel a job",
)
def cancel_job(request: Request, job_id: str, session: SessionDep, principal: ApiKeyDep) -> JobView:
    """Cancel a queued or running job: the worker stops before its next chunk and deletes the files.
    Cancelling a cancelled job is fine; a job that succeeded or failed answers 409."""
    job = _owned(session, job_id, principal)
    if not cancel(session, job, job_settings(request)) and job.status != JobStatus.cancelled:
        raise HTTPException(
            409,
            detail={
                "error": "already_ended",
                "message": f"the job has already {job.status}",
                "status": job.status,
            },
        )
    return _view(request, job)


@router.get(
    "/jobs/{job_id}/result",
    responses={
        **JOB_ERRORS,
        200: {
            "description": "CSV for CSV jobs; JSON (or CSV with Accept: text/csv) for batch jobs; "
            "xlsx with format=xlsx",
            "content": {"text/csv": {}, "application/json": {}, XLSX_MEDIA_TYPE: {}},
        },
        409: {"description": "the job has not succeeded (yet): see `status`"},
        410: {"description": "the result has expired and was deleted"},
    },
    summary="Download a job's result",
)
def get_job_result(
    request: Request,
    job_id: str,
    session: SessionDep,
    principal: ApiKeyDep,
    format: Annotated[
        Literal["csv", "xlsx", "json"] | None,
        Query(
            description="csv, xlsx or json (a CSV job's JSON: its rows as objects); default: CSV for CSV "
            "jobs, JSON for batch jobs (CSV with Accept: text/csv, xlsx with the spreadsheetml type)"
        ),
    ] = None,  # fmt: skip
) -> Response:
    """The result: the input columns, the result columns, row_error, then final_code, coded_by and
    final_status, the same columns before and after review (pending: in the review queue, undecided)."""
    job = _owned(session, job_id, principal)
    if (job.options or {}).get("expired"):
        raise HTTPException(
            410, detail={"error": "expired", "message": "the result has expired and was deleted"}
        )
    if job.status != JobStatus.succeeded:
        status_url, _ = _urls(request, job.id)
        message = f"the job is {job.status}" + (f": {job.error}" if job.error else "")
        raise HTTPException(
            409,
            detail={"error": "not_ready", "message": message, "status": job.status, "status_url": status_url},
        )
    path = Path(job.result_path or "")
    if not path.is_file():
        raise HTTPException(410, detail={"error": "expired", "message": "the result file is gone"})
    # every row says `final_code`, `coded_by` and `final_status`, reviewed or not (shared.review.exports)
    decisions = decisions_for_job(session, job.id)
    accept = request.headers.get("accept", "")
    if format is None:
        format = (
            "xlsx"
            if XLSX_MEDIA_TYPE in accept
            else "csv"
            if job.kind == "csv" or "text/csv" in accept
            else "json"
        )
    if format == "json":
        if job.kind == "csv":
            return StreamingResponse(iter_csv_job_json(job, decisions), media_type="application/json")
        return StreamingResponse(iter_batch_json(job, path, decisions), media_type="application/json")
    return result_download(job, decisions, format, f"isco-{job.id}")
