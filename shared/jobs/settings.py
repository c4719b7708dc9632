"""Job settings: one typed settings class read by the gateway (uploads) and the workers (processing)."""

from __future__ import annotations

from pydantic import Field, model_validator

from shared.settings import CommonSettings


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
