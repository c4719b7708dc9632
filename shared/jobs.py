"""Coding jobs (CSV uploads and over-size batches): settings, file layout, and every change of a job's state.

This module owns job state: nothing else writes `Job.status` or progress. The changes are
`create_job` (queued) -> `start` (running) -> `advance` (one chunk done, per chunk) -> `finish` (succeeded) |
`fail` (failed, with an error text free of server paths) | `cancel` (cancelled); training jobs use
`start_training` / `finish_training`; `sweep_expired` marks ended jobs whose files are gone. Each is one
conditional UPDATE, so a cancel and a worker, or two workers, cannot overwrite each other. Helpers flush;
the caller (request or task) commits.

Faults: the DB row is the job. A worker holds a job through a lease in Redis (`Lease`, renewed by a
heartbeat thread, lapsing `job_lock_ttl_s` after its holder stops), and every task sent for a job leaves a
marker (`mark_sent`) until a worker picks it up. `reconcile` (Celery beat, and every worker at start-up)
re-sends each queued or running job that has neither: its worker died, or the broker lost its task. Training
jobs hold a lease too; one that was running when its worker died is failed instead (a run is not resumable,
and the same run may kill the next worker the same way).

Review: `result_rows` reads a finished job's result rows; `record_final_code` records a reviewer's code.

Files on the shared volume:
    uploads/<job_id>.csv | .jsonl       the input (CSV upload, or JSON lines of batch records)
    results/<job_id>/parts/<n>.part      one finished chunk of results, written to a temp name and renamed
    results/<job_id>/result.csv | .jsonl the final result: header + parts in chunk order
"""

from __future__ import annotations

import csv
import logging
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, cast

from pydantic import AfterValidator, BaseModel, Field, model_validator
from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from shared.db.tables import Job, JobStatus, utcnow
from shared.settings import CommonSettings

log = logging.getLogger(__name__)

JobKind = Literal["csv", "batch"]
ACTIVE = (JobStatus.queued, JobStatus.running)
RESUMABLE_KINDS = ("csv", "batch")  # training runs are not resumed chunk by chunk
TRAINING = "training"
TRAINING_LOST = "the worker running this training job was lost (killed or out of memory); submit it again"


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
        30.0,
        gt=0,
        description="a worker's lease on a job lapses this long after its last heartbeat (crash recovery)",
    )
    job_heartbeat_s: float = Field(
        5.0, gt=0, description="how often a worker renews its lease while it runs a job (< job_lock_ttl_s)"
    )
    job_reconcile_interval_s: float = Field(
        10.0, gt=0, description="how often beat re-sends queued/running jobs that no live worker holds"
    )
    job_sent_marker_ttl_s: float = Field(
        3600.0, gt=0, description="a sent task that no worker has picked up is sent again after this long"
    )

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> JobSettings:
        if self.job_heartbeat_s * 2 > self.job_lock_ttl_s:
            raise ValueError(
                f"job_heartbeat_s ({self.job_heartbeat_s}) must be at most half of job_lock_ttl_s "
                f"({self.job_lock_ttl_s}): a live worker's lease would lapse between two heartbeats"
            )
        return self

    broker_visibility_timeout_s: float = Field(
        3600.0, gt=0, description="an unacknowledged task is redelivered after this long (worker gone)"
    )
    celery_task_soft_time_limit_s: float = Field(
        3000.0, gt=0, description="a job task hands over (re-queues itself) after this long; it resumes"
    )


def new_job_id() -> str:
    """An unguessable job id (192 random bits, URL-safe) that does not start with "-": command lines
    (`isco jobs get ID`) would read such an id as an option."""
    while (job_id := secrets.token_urlsafe(24)).startswith("-"):
        pass
    return job_id


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


# ----------------------------------------------------------------------------------------------------
# Leases, sent markers and the reconciler (Redis)
# ----------------------------------------------------------------------------------------------------


def lease_key(job_id: str) -> str:
    return f"isco:job-lease:{job_id}"


def sent_key(job_id: str) -> str:
    return f"isco:job-sent:{job_id}"


_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class Lease:
    """A per-job lock in Redis with a time to live; only its holder (by random token) renews or frees it."""

    def __init__(self, redis_client: Any, job_id: str, ttl_s: float):
        self.redis = redis_client
        self.key = lease_key(job_id)
        self.ttl_ms = max(1, int(ttl_s * 1000))
        # says who holds it (host and pid, for operators and tests), and a random part that makes it unique
        self.token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"

    def acquire(self) -> bool:
        return bool(self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))

    def renew(self) -> bool:
        """True while this holder still has the lease (its time to live starts again)."""
        return bool(self.redis.eval(_RENEW, 1, self.key, self.token, self.ttl_ms))

    def release(self) -> None:
        self.redis.eval(_RELEASE, 1, self.key, self.token)


def lease_holder_pid(redis_client: Any, job_id: str) -> int | None:
    """The pid of the process holding the job's lease (on its host), or None when no one holds it."""
    value = redis_client.get(lease_key(job_id))
    if not value:
        return None
    parts = value.decode() if isinstance(value, bytes) else str(value)
    fields = parts.split(":")
    return int(fields[-2]) if len(fields) >= 3 and fields[-2].isdigit() else None


def mark_sent(redis_client: Any, job_id: str, settings: JobSettings) -> None:
    """Note that a task for the job is in the queue (set before sending, so `reconcile` leaves it alone)."""
    redis_client.set(sent_key(job_id), "1", px=int(settings.job_sent_marker_ttl_s * 1000))


def clear_sent(redis_client: Any, job_id: str) -> None:
    """A worker picked the task up: from now on its lease speaks for the job."""
    redis_client.delete(sent_key(job_id))


def unattended(session: Session, redis_client: Any) -> list[tuple[str, str, str]]:
    """(id, kind, status) of the queued or running jobs with neither a live lease nor a task in the queue."""
    rows = session.execute(
        select(Job.id, Job.kind, Job.status)
        .where(Job.status.in_([str(s) for s in ACTIVE]), Job.kind.in_((*RESUMABLE_KINDS, TRAINING)))
        .order_by(Job.created_at, Job.id)
    ).all()
    if not rows:
        return []
    pipe = redis_client.pipeline(transaction=False)
    for job_id, _, _ in rows:
        pipe.exists(lease_key(job_id), sent_key(job_id))
    return [
        (job_id, kind, str(status))
        for (job_id, kind, status), held in zip(rows, pipe.execute(), strict=True)
        if not held
    ]


def reconcile(
    session: Session, redis_client: Any, send: Callable[[str, str], None], settings: JobSettings
) -> list[str]:
    """Re-send (`send(job_id, kind)`) every job that `unattended` finds (its worker died, or the broker lost
    its task), except a training run whose worker died, which is failed; returns the ids handled. A job sent
    twice is harmless: the lease lets one task run it, and a finished job is skipped."""
    resent, failed = [], []
    for job_id, kind, status in unattended(session, redis_client):
        if kind == TRAINING and status == str(JobStatus.running):
            if fail(session, job_id, TRAINING_LOST, settings):
                failed.append(job_id)
            continue
        mark_sent(redis_client, job_id, settings)
        send(job_id, kind)
        resent.append(job_id)
    if resent:
        log.warning("re-sent %d job(s) that no worker held: %s", len(resent), ", ".join(resent))
    if failed:
        log.warning("failed %d training job(s) whose worker was lost: %s", len(failed), ", ".join(failed))
    return resent + failed


# ----------------------------------------------------------------------------------------------------
# Result rows (the review page reads them and records final codes)
# ----------------------------------------------------------------------------------------------------


def result_rows(job: Job) -> Iterator[tuple[int, dict[str, str]]]:
    """(row number from 1, {column: cell}) for each row of a finished CSV job's result, in input order.
    The columns are `shared.csvio.result_header(...)` of the job's input; cells as written (neutralised)."""
    if job.kind != "csv" or not job.result_path:
        raise ValueError(f"job {job.id} has no CSV result (kind {job.kind}, status {job.status})")
    from shared import csvio

    layout = csvio.read_layout(Path(job.input_path)) if Path(job.input_path).is_file() else None
    delimiter = layout.delimiter if layout is not None else ","
    with open(job.result_path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader)
        for number, cells in enumerate(reader, start=1):
            yield number, dict(zip(header, cells, strict=False))


def record_final_code(
    session: Session,
    job: Job,
    row_number: int,
    final_code: str | None,
    *,
    action: str,
    reviewer_name: str,
    reviewer_key_id: int | None = None,
    job_title: str = "",
    duties_description: str = "",
    model_code: str | None = None,
) -> Any:
    """Record a reviewer's final code (None: uncodable) for one result row: the current decision is
    replaced and the change is added to the audit trail. Flushes; the request commits."""
    from shared.db.tables import ReviewDecision, ReviewEvent

    decision = session.scalars(
        select(ReviewDecision).where(ReviewDecision.job_id == job.id, ReviewDecision.row_number == row_number)
    ).first()
    previous = decision.final_code if decision is not None else None
    if decision is None:
        decision = ReviewDecision(
            job_id=job.id,
            row_number=row_number,
            job_title=job_title,
            duties_description=duties_description,
            model_code=model_code,
        )
        session.add(decision)
    decision.final_code = final_code
    decision.action = action
    decision.reviewer_key_id = reviewer_key_id
    decision.reviewer_name = reviewer_name
    decision.decided_at = utcnow()
    session.add(
        ReviewEvent(
            job_id=job.id,
            row_number=row_number,
            model_code=decision.model_code,
            previous_code=previous,
            final_code=final_code,
            action=action,
            reviewer_key_id=reviewer_key_id,
            reviewer_name=reviewer_name,
        )
    )
    session.flush()
    return decision


# ----------------------------------------------------------------------------------------------------
# API views (gateway responses, CLI client)
# ----------------------------------------------------------------------------------------------------


def as_utc(moment: datetime) -> datetime:
    """A stored time as an aware UTC datetime: every stored time is UTC, and SQLite gives it back naive."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# Serialised with its zone ("2025-05-01T09:30:00Z"), as RFC 3339 (the schema's `date-time`) requires.
UtcDatetime = Annotated[datetime, AfterValidator(as_utc), Field(description="UTC, RFC 3339 (ends in Z)")]


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
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    expires_at: UtcDatetime | None = Field(description="when the job's files are deleted (UTC)")
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
            error=public_error(job.error) if job.error else None,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            expires_at=job.expires_at,
            expired=bool((job.options or {}).get("expired")),
            status_url=status_url,
            result_url=result_url,
        )
