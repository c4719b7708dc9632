"""Who holds a job: worker leases and sent markers in Redis, and the reconciler that re-sends lost jobs.

Faults: the DB row is the job. A worker holds a job through a lease in Redis (`Lease`, renewed by a
heartbeat thread, lapsing `job_lock_ttl_s` after its holder stops), and every task sent for a job leaves a
marker (`mark_sent`) until a worker picks it up. `reconcile` (Celery beat, and every worker at start-up)
re-sends each queued or running job that has neither: its worker died, or the broker lost its task. Training
jobs hold a lease too; one that was running when its worker died is failed instead (a run is not resumable,
and the same run may kill the next worker the same way).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.tables import Job, JobStatus
from shared.jobs.settings import JobSettings
from shared.jobs.state import ACTIVE, RESUMABLE_KINDS, TRAINING, TRAINING_LOST, fail

log = logging.getLogger(__name__)


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
