"""The job row: creating and listing jobs, and every change of a job's state.

Nothing else writes `Job.status` or progress. The changes are `create_job` (queued) -> `start` (running) ->
`advance` (one chunk done, per chunk) -> `finish` (succeeded) | `fail` (failed, with an error text free of
server paths) | `cancel` (cancelled); training jobs use `start_training` / `finish_training`; `sweep_expired`
marks ended jobs whose files are gone. Each is one conditional UPDATE, so a cancel and a worker, or two
workers, cannot overwrite each other. Helpers flush; the caller (request or task) commits.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import Session

from shared.db.tables import Job, JobStatus, utcnow
from shared.jobs.files import JobKind, delete_job_files
from shared.jobs.settings import JobSettings

ACTIVE = (JobStatus.queued, JobStatus.running)
RESUMABLE_KINDS = ("csv", "batch")  # training runs are not resumed chunk by chunk
TRAINING = "training"
TRAINING_LOST = "the worker running this training job was lost (killed or out of memory); submit it again"


def new_job_id() -> str:
    """An unguessable job id (192 random bits, URL-safe) that does not start with "-": command lines
    (`isco jobs get ID`) would read such an id as an option."""
    while (job_id := secrets.token_urlsafe(24)).startswith("-"):
        pass
    return job_id


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


def owner_jobs(session: Session, owner_key_id: int | None, offset: int, limit: int) -> tuple[list[Job], int]:
    """One page of a key's jobs, newest first, and how many jobs the key has in all."""
    owned = Job.owner_key_id.is_(None) if owner_key_id is None else Job.owner_key_id == owner_key_id
    total = int(session.scalar(select(func.count()).select_from(Job).where(owned)) or 0)
    page = session.scalars(
        select(Job).where(owned).order_by(Job.created_at.desc(), Job.id).offset(offset).limit(limit)
    )
    return list(page), total


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


def start(session: Session, job_id: str, **values: Any) -> bool:
    """queued/running -> running (a resumed job stays running), with the model version, options and start
    time in `values`. False when the job has ended meanwhile (e.g. cancelled)."""
    return transition(session, job_id, JobStatus.running, only_from=ACTIVE, **values)


def advance(session: Session, job_id: str, chunk: int, rows: int, failed: int) -> bool:
    """Record chunk `chunk` as done (rows and failed rows added). Only from `chunks_done == chunk` on a
    running job, so a chunk is counted once however many workers wrote it. False: cancelled, or another
    worker got there first."""
    result = cast(
        CursorResult[Any],
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.running, Job.chunks_done == chunk)
            .values(
                chunks_done=chunk + 1, rows_done=Job.rows_done + rows, rows_failed=Job.rows_failed + failed
            )
            .execution_options(synchronize_session=False)
        ),
    )
    session.flush()
    return bool(result.rowcount)


def start_training(session: Session, job_id: str) -> bool:
    """queued -> running for a training job: from queued only, so a redelivered training task never starts
    a second run."""
    return transition(session, job_id, JobStatus.running, only_from=(JobStatus.queued,), started_at=utcnow())


def finish_training(
    session: Session, job_id: str, version: str, options: dict[str, Any], settings: JobSettings
) -> bool:
    """running -> succeeded for a training job, with the model version it produced and its outcome."""
    now = utcnow()
    return transition(
        session,
        job_id,
        JobStatus.succeeded,
        only_from=(JobStatus.running,),
        model_version=version,
        options=options,
        finished_at=now,
        expires_at=now + timedelta(hours=settings.job_ttl_hours),
    )


def restart_progress(session: Session, job_id: str) -> None:
    """Start a job's progress over (its pinned model is gone; parts must be deleted by the caller)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_([str(s) for s in ACTIVE]))
        .values(chunks_done=0, rows_done=0, rows_failed=0)
        .execution_options(synchronize_session=False)
    )
    session.flush()


def finish(session: Session, job_id: str, result_file: Path, settings: JobSettings) -> bool:
    """running -> succeeded with its result file; the files expire `job_ttl_hours` from now."""
    now = utcnow()
    return transition(
        session,
        job_id,
        JobStatus.succeeded,
        only_from=(JobStatus.running,),
        result_path=str(result_file),
        finished_at=now,
        expires_at=now + timedelta(hours=settings.job_ttl_hours),
    )


def fail(session: Session, job_id: str, error: str, settings: JobSettings, **values: Any) -> bool:
    """queued/running -> failed with an error text for the API (server paths removed)."""
    now = utcnow()
    return transition(
        session,
        job_id,
        JobStatus.failed,
        only_from=ACTIVE,
        error=public_error(error)[:10_000],
        finished_at=now,
        expires_at=now + timedelta(hours=settings.job_ttl_hours),
        **values,
    )


_PATH = re.compile(r"(?<![\w:/])(?:[A-Za-z]:)?(?:[/\\][\w.@+\-]+){2,}[/\\]?")


def public_error(text: str) -> str:
    """An error text fit for API clients: absolute file paths become their last part (`.../name`)."""
    return _PATH.sub(lambda m: ".../" + re.split(r"[/\\]", m.group(0).rstrip("/\\"))[-1], text)


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
