"""The thin Celery client: send tasks by name to the workers' queues, without importing any task code.

Used by the gateway (prediction jobs) and by anything that queues a training run. Importing this module
imports Celery and the shared job rules only (no torch, no worker code). The job row must be committed before
a task naming it is sent.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from services.worker.constants import QUEUE_TRAINING, TASK_PROCESS_JOB, TASK_TRAIN
from shared.db.session import session_scope
from shared.db.tables import Job, JobStatus
from shared.jobs.leases import mark_sent
from shared.jobs.settings import JobSettings
from shared.jobs.state import new_job_id

# A broker that is down should fail the request quickly, not hang it.
PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2.0}


@lru_cache(maxsize=4)
def celery_client(broker_url: str) -> Any:
    """A Celery app used only to send tasks by name."""
    from celery import Celery

    return Celery("isco-client", broker=broker_url, set_as_current=False)


@lru_cache(maxsize=4)
def redis_client(redis_url: str) -> Any:
    """A Redis client for the job markers (short timeouts: a broker that is down fails the request fast)."""
    import redis

    return redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)


def send_job(settings: JobSettings, job_id: str) -> None:
    """Queue the processing of a committed job on the prediction queue (`job_queue`: cpu or gpu), marked as
    sent so that the reconciler does not send it again while it waits in the queue."""
    mark_sent(redis_client(settings.redis_url), job_id, settings)
    celery_client(settings.redis_url).send_task(
        TASK_PROCESS_JOB, args=[job_id], queue=settings.job_queue, retry=True, retry_policy=PUBLISH_RETRY
    )


def enqueue_training(settings: JobSettings, options: dict[str, Any], owner_key_id: int | None = None) -> str:
    """Record a training job and queue it on the `training` queue; returns the job id.

    `options`: {"settings": TrainerSettings overrides (e.g. {"profile": "quick"}), "data_csv": path,
    "corrections": path, "base_model": name} (all optional). Paths must be on the shared volume.
    """
    job_id = new_job_id()
    with session_scope(settings.db_url) as session:
        session.add(
            Job(
                id=job_id,
                owner_key_id=owner_key_id,
                kind="training",
                status=JobStatus.queued,
                input_path=str(options.get("data_csv") or ""),
                options=options,
            )
        )
    mark_sent(redis_client(settings.redis_url), job_id, settings)
    celery_client(settings.redis_url).send_task(
        TASK_TRAIN, args=[job_id], queue=QUEUE_TRAINING, retry=True, retry_policy=PUBLISH_RETRY
    )
    return job_id
