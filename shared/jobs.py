"""Coding jobs (CSV uploads and over-size batches): settings, file layout and the rules both sides share.

The gateway creates a job (row + input file), commits, then sends the task by name; a worker processes it
and records progress on the row. Both sides use the helpers here, so the file layout and the state changes
are written once. Helpers flush; the caller (request or task) commits.

Files on the shared volume:
    uploads/<job_id>.csv | .jsonl       the input (CSV upload, or JSON lines of batch records)
    results/<job_id>/parts/<n>.part      one finished chunk of results, written to a temp name and renamed
    results/<job_id>/result.csv | .jsonl the final result: header + parts in chunk order
"""

from __future__ import annotations

import secrets
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import BaseModel, Field
from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from shared.db.tables import Job, JobStatus, utcnow
from shared.settings import CommonSettings

JobKind = Literal["csv", "batch"]
ACTIVE = (JobStatus.queued, JobStatus.running)


class JobSettings(CommonSettings):
    """Limits and queue settings for jobs, read by the gateway (uploads) and the workers (processing)."""

    job_queue: str = Field("cpu", description="Celery queue that prediction jobs are sent to (cpu or gpu)")
    job_max_upload_bytes: int = Field(200 * 1024 * 1024, ge=1, description="largest accepted CSV upload")
    job_max_rows: int = Field(1_000_000, ge=1, description="most data rows in one CSV upload or batch job")
    job_chunk_rows: int = Field(
        1024, ge=1, description="rows per chunk: the unit of progress and of resuming"
    )
    job_ttl_hours: float = Field(
        72.0, gt=0, description="uploads and results are deleted this long after the job ends"
    )
    job_lock_ttl_s: float = Field(
        120.0,
        gt=0,
        description="a worker's claim on a job lapses this long after its last chunk (crash recovery)",
    )
    broker_visibility_timeout_s: float = Field(
        3600.0, gt=0, description="an unacknowledged task is redelivered after this long (worker gone)"
    )
    celery_task_soft_time_limit_s: float = Field(
        3000.0, gt=0, description="a job task hands over (re-queues itself) after this long; it resumes"
    )


def new_job_id() -> str:
    """An unguessable job id (192 random bits, URL-safe)."""
    return secrets.token_urlsafe(24)


# ----------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------


def input_path(settings: CommonSettings, job_id: str, kind: JobKind) -> Path:
    return settings.uploads_dir / f"{job_id}.{'csv' if kind == 'csv' else 'jsonl'}"


def job_dir(settings: CommonSettings, job_id: str) -> Path:
    return settings.results_dir / job_id


def parts_dir(settings: CommonSettings, job_id: str) -> Path:
    return job_dir(settings, job_id) / "parts"


def part_path(settings: CommonSettings, job_id: str, chunk: int) -> Path:
    return parts_dir(settings, job_id) / f"{chunk:08d}.part"


def result_path(settings: CommonSettings, job_id: str, kind: str) -> Path:
    return job_dir(settings, job_id) / f"result.{'csv' if kind == 'csv' else 'jsonl'}"


def delete_job_files(settings: CommonSettings, job: Job) -> None:
    """Remove a job's input and results (missing files are fine: deletion may be repeated)."""
    Path(job.input_path).unlink(missing_ok=True)
    shutil.rmtree(job_dir(settings, job.id), ignore_errors=True)


# ----------------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------------


def create_job(
    session: Session,
    *,
    job_id: str,
    kind: JobKind,
    owner_key_id: int | None,
    input_file: Path,
    rows_total: int,
    options: dict[str, Any],
    settings: JobSettings,
) -> Job:
    """Add a queued job row (flushed; the request commits it before the task is sent)."""
    now = utcnow()
    job = Job(
        id=job_id,
        owner_key_id=owner_key_id,
        kind=kind,
        status=JobStatus.queued,
        input_path=str(input_file),
        options=options,
        rows_total=rows_total,
        created_at=now,
        # a job that is never picked up still expires; finishing moves the date to end + ttl
        expires_at=now + timedelta(hours=settings.job_ttl_hours),
    )
    session.add(job)
    session.flush()
    return job


def owned_job(session: Session, job_id: str, owner_key_id: int | None) -> Job | None:
    """The job if it belongs to this key (dev mode without keys: jobs without owner); else None, so that a
    caller cannot tell another key's job from a missing one."""
    job = session.get(Job, job_id)
    if job is None or job.owner_key_id != owner_key_id:
        return None
    return job


def list_jobs(
    session: Session, owner_key_id: int | None, limit: int = 100, status: str | None = None
) -> list[Job]:
    stmt = select(Job).where(
        Job.owner_key_id.is_(None) if owner_key_id is None else Job.owner_key_id == owner_key_id
    )
    if status:
        stmt = stmt.where(Job.status == status)
    return list(session.scalars(stmt.order_by(Job.created_at.desc(), Job.id).limit(limit)))


def transition(
    session: Session, job_id: str, to: JobStatus, *, only_from: tuple[str, ...], **values: Any
) -> bool:
    """Move a job to `to` only if it is in one of `only_from` (one conditional UPDATE, so a cancel and a
    worker finishing at the same moment cannot overwrite each other). True when the row changed."""
    result = cast(
        CursorResult[Any],
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_([str(s) for s in only_from]))
            .values(status=str(to), **values)
            .execution_options(synchronize_session=False)
        ),
    )
    session.flush()
    return bool(result.rowcount)


def cancel(session: Session, job: Job, settings: JobSettings) -> bool:
    """Cancel a queued or running job (the worker notices before its next chunk). False if it had ended."""
    now = utcnow()
    changed = transition(
        session,
        job.id,
        JobStatus.cancelled,
        only_from=ACTIVE,
        finished_at=now,
        expires_at=now + timedelta(hours=settings.job_ttl_hours),
    )
    session.refresh(job)
    return changed


def sweep_expired(session: Session, settings: JobSettings, now: datetime | None = None) -> int:
    """Delete the files of ended jobs whose time is up; the rows stay (marked expired) for the job list."""
    now = now or utcnow()
    ended = [str(s) for s in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)]
    jobs = session.scalars(
        select(Job).where(
            Job.expires_at < now, Job.status.in_(ended), Job.result_path.is_not(None) | (Job.input_path != "")
        )
    ).all()
    for job in jobs:
        delete_job_files(settings, job)
        job.result_path = None
        job.input_path = ""
        job.options = {**(job.options or {}), "expired": True}
    session.flush()
    return len(jobs)


# ----------------------------------------------------------------------------------------------------
# API views (gateway responses, CLI client)
# ----------------------------------------------------------------------------------------------------


class JobAccepted(BaseModel):
    """202 answer to a CSV upload or an over-size batch."""

    job_id: str
    status: str
    rows_total: int
    status_url: str
    result_url: str


class JobView(BaseModel):
    """A job as `GET /jobs/{id}` shows it."""

    job_id: str
    kind: str
    status: str
    rows_total: int
    rows_done: int
    rows_failed: int
    progress: float = Field(description="rows_done / rows_total, 0..1")
    model_version: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime | None
    expired: bool = False
    status_url: str
    result_url: str

    @classmethod
    def of(cls, job: Job, status_url: str, result_url: str) -> JobView:
        return cls(
            job_id=job.id,
            kind=job.kind,
            status=job.status,
            rows_total=job.rows_total,
            rows_done=job.rows_done,
            rows_failed=job.rows_failed,
            progress=round(job.rows_done / job.rows_total, 4) if job.rows_total else 0.0,
            model_version=job.model_version,
            error=job.error,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            expires_at=job.expires_at,
            expired=bool((job.options or {}).get("expired")),
            status_url=status_url,
            result_url=result_url,
        )
