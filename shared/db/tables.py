"""Tables of the metadata DB: model versions (the registry), jobs, API keys and review decisions."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# A fixed naming convention so that Alembic migrations name constraints the same on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class ModelStatus(enum.StrEnum):
    pending = "pending"
    ready = "ready"
    failed = "failed"


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class ModelVersion(Base):
    """One trained model in the model store; shaped like MLflow's model versions."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    path: Mapped[str] = mapped_column(Text)
    base_model: Mapped[str] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(16), default=ModelStatus.pending)
    is_best: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    eval_data_hash: Mapped[str | None] = mapped_column(String(64))
    eval_score: Mapped[float | None] = mapped_column(Float)
    data_hash: Mapped[str | None] = mapped_column(String(64))
    parent_version: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column()


class Job(Base):
    """A batch or CSV coding job. The row is the job: tasks carry only its id."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # csv | batch
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued, index=True)
    input_path: Mapped[str] = mapped_column(Text)
    result_path: Mapped[str | None] = mapped_column(Text)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    rows_total: Mapped[int] = mapped_column(Integer, default=0)
    rows_done: Mapped[int] = mapped_column(Integer, default=0)
    rows_failed: Mapped[int] = mapped_column(Integer, default=0)
    chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    model_version: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    expires_at: Mapped[datetime | None] = mapped_column()


class ApiKey(Base):
    """An API key; only its salted SHA-256 hash is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()
    last_used_at: Mapped[datetime | None] = mapped_column()


class ReviewAction(enum.StrEnum):
    """What a coder did with a row of the review queue."""

    accept = "accept"  # the model's unit group
    alternative = "alternative"  # one of the model's other alternatives
    search = "search"  # a code found by searching the taxonomy
    uncodable = "uncodable"  # no code can be given (final_code is null)


class ReviewDecision(Base):
    """The current decision on one result row of a job (one per row; `ReviewEvent` keeps every change).

    The texts are copied here so that the decisions stay usable as corrections after the job's files expire.
    """

    __tablename__ = "review_decisions"
    __table_args__ = (UniqueConstraint("job_id", "row_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    row_number: Mapped[int] = mapped_column(Integer)  # data row, counted from 1 as in the result file
    job_title: Mapped[str] = mapped_column(Text, default="")
    duties_description: Mapped[str] = mapped_column(Text, default="")
    model_code: Mapped[str | None] = mapped_column(String(8))
    final_code: Mapped[str | None] = mapped_column(String(8))  # null: uncodable
    action: Mapped[str] = mapped_column(String(16))
    reviewer_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"), index=True)
    reviewer_name: Mapped[str] = mapped_column(String(200))
    decided_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReviewEvent(Base):
    """Audit trail: every decision ever made on a row, never updated or deleted by the application."""

    __tablename__ = "review_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    row_number: Mapped[int] = mapped_column(Integer)
    model_code: Mapped[str | None] = mapped_column(String(8))
    previous_code: Mapped[str | None] = mapped_column(String(8))
    final_code: Mapped[str | None] = mapped_column(String(8))
    action: Mapped[str] = mapped_column(String(16))
    reviewer_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"), index=True)
    reviewer_name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
