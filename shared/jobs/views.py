"""How the API shows a job: the 202 answer to a submission and the job as `GET /jobs/{id}` shows it.

Used by the gateway's responses and the CLI client; times are UTC, serialised with their zone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field

from shared.db.tables import Job
from shared.jobs.state import public_error


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
    # workbook uploads only (left out of the answer otherwise): the sheet read, all the sheets, and what the
    # coder should know about the input (formula cells read as their saved values)
    sheet: str | None = None
    sheets: list[str] | None = None
    notes: list[str] | None = None


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
