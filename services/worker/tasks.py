"""Celery tasks. Each takes a job id only; the job row holds everything else and records the outcome.

Retries: transient errors (DB or Redis unreachable, a timeout) are retried with capped, jittered exponential
backoff; any other exception is a bug or bad data that would fail the same way again, so the job is marked
failed at once with the error. A task that reaches its soft time limit sends a fresh task for the same job and
ends; the fresh task resumes from the last chunk. A task that finds the job held by a live worker ends: if
that worker dies, `reconcile_jobs` (beat, and each worker at start-up) re-sends the job once its lease lapses
(a training job that was running is failed instead: see `train_model`).
"""

from __future__ import annotations

import logging
import random
import threading
from pathlib import Path
from typing import Any

import redis
import redis.exceptions
import sqlalchemy.exc
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_ready

from services.worker.celery_app import app
from services.worker.constants import (
    QUEUE_TRAINING,
    TASK_PROCESS_JOB,
    TASK_RECONCILE,
    TASK_SWEEP_EXPIRED,
    TASK_TRAIN,
)
from services.worker.processing import Heartbeat, JobProcessor, LeaseHeld
from services.worker.settings import WorkerSettings
from shared.db.session import session_scope
from shared.db.tables import Job, JobStatus
from shared.jobs.leases import Lease, clear_sent, mark_sent, reconcile
from shared.jobs.state import TRAINING, TRAINING_LOST, fail, finish_training, start_training
from shared.jobs.state import sweep_expired as sweep_expired_jobs

log = logging.getLogger(__name__)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
)

_processor: JobProcessor | None = None


def processor() -> JobProcessor:
    """This worker process's JobProcessor (and so its model, its Redis client and its sessions), created on
    first use: in a pool process on its first task, never in the main process, whose objects the pool's
    children would inherit across the fork (engines are per process: `shared.db.session.get_engine`)."""
    global _processor
    if _processor is None:
        _processor = JobProcessor(WorkerSettings())
    return _processor


def backoff_s(retries: int, cap_s: float) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, 2 ** retries)] seconds, at least 1."""
    return max(1.0, random.uniform(0, min(cap_s, 2.0**retries)))


def mark_failed(settings: WorkerSettings, job_id: str, error: str) -> None:
    """Record a terminal failure on the row (best effort: the DB itself may be what failed)."""
    try:
        with session_scope(settings.db_url) as session:
            fail(session, job_id, error, settings)
    except Exception:
        log.exception("job %s: could not record the failure %r", job_id, error)


def send_job_task(settings: WorkerSettings, job_id: str, countdown: float | None = None) -> None:
    """Queue a (fresh) processing task for a job, marking it sent so that the reconciler leaves it alone."""
    mark_sent(processor()._redis(), job_id, settings)
    process_job.apply_async(args=[job_id], queue=settings.job_queue, countdown=countdown)


@app.task(name=TASK_PROCESS_JOB, bind=True, acks_late=True, ignore_result=True, max_retries=None)
def process_job(self: Any, job_id: str) -> None:
    """Code every row of a job (CSV upload or batch); resumes where an earlier run stopped."""
    proc = processor()
    settings = proc.settings
    try:
        result = proc.run(job_id)
        log.info("job %s: %s after %d chunk(s) in this run", job_id, result.status, result.chunks_run)
    except LeaseHeld:
        # A live worker is on it (it renewed its lease while we waited); the reconciler covers its death.
        log.info("job %s: held by a live worker; this task ends", job_id)
    except SoftTimeLimitExceeded:
        log.info("job %s: time slice used up; handing over (resumes from the last chunk)", job_id)
        send_job_task(settings, job_id)
    except TRANSIENT_ERRORS as exc:
        if self.request.retries >= settings.retry_max:
            mark_failed(
                settings, job_id, f"gave up after {self.request.retries} retries: {type(exc).__name__}: {exc}"
            )
            return
        log.warning("job %s: transient error, retrying: %s", job_id, exc)
        raise self.retry(
            exc=exc, countdown=backoff_s(self.request.retries, settings.retry_backoff_max_s)
        ) from exc
    except Exception as exc:  # a bug or bad data: the same error would come back on every retry
        log.exception("job %s failed", job_id)
        mark_failed(settings, job_id, f"internal error: {type(exc).__name__}: {exc}")
    finally:
        _sweep_quietly(settings)


def _sweep_quietly(settings: WorkerSettings) -> None:
    try:
        with session_scope(settings.db_url) as session:
            sweep_expired_jobs(session, settings)
    except Exception:  # housekeeping must never fail a job
        log.exception("sweeping expired jobs failed")


def reconcile_now(settings: WorkerSettings, redis_client: Any) -> list[str]:
    """Re-send every queued or running job that no live worker holds and no queued task names."""

    def send(job_id: str, kind: str) -> None:
        if kind == TRAINING:
            train_model.apply_async(args=[job_id], queue=QUEUE_TRAINING)
        else:
            process_job.apply_async(args=[job_id], queue=settings.job_queue)

    with session_scope(settings.db_url) as session:
        return reconcile(session, redis_client, send, settings)


@worker_ready.connect
def _reconcile_at_start_up(**_: object) -> None:
    # After a restart (of this worker, the broker or the machine) re-send the jobs that no live worker holds,
    # without waiting for beat. In a thread: a DB or Redis outage must not hold up the worker's start.
    def reconcile_in_background() -> None:
        try:
            # its own Redis client, not the job processor's: the pool's children must not inherit one
            settings = WorkerSettings()
            with redis.Redis.from_url(settings.redis_url) as redis_client:
                resent = reconcile_now(settings, redis_client)
            log.info("start-up reconciliation: %d job(s) re-sent", len(resent))
        except Exception:
            log.exception("start-up reconciliation failed")

    threading.Thread(target=reconcile_in_background, daemon=True, name="reconcile-at-start-up").start()


@app.task(name=TASK_RECONCILE, ignore_result=True)
def reconcile_jobs() -> None:
    """Beat's periodic reconciliation (`shared.jobs.leases`); an outage is logged and tried next time."""
    try:
        reconcile_now(processor().settings, processor()._redis())
    except TRANSIENT_ERRORS as exc:
        log.warning("reconciling jobs failed (will retry at the next beat): %s", exc)


@app.task(name=TASK_SWEEP_EXPIRED, ignore_result=True)
def sweep_expired() -> None:
    """Delete the files of jobs past their expiry (also done after every job; beat may schedule it)."""
    _sweep_quietly(processor().settings)


@app.task(name=TASK_TRAIN, bind=True, acks_late=True, ignore_result=True, max_retries=0)
def train_model(self: Any, job_id: str) -> None:
    """A training run on the `training` queue (thin: the trainer's `run_training` does the work).

    The job row's options (services/worker/client.py `enqueue_training`) hold TrainerSettings overrides
    and the data paths; the outcome (version, promotion decision) is recorded on the row. The run holds the
    job's lease (renewed by a heartbeat), so the reconciler can tell a live run from a lost one. A run is not
    resumable: a task redelivered after its worker died (status running, lease lapsed) fails the job instead
    of starting a run that may kill the next worker the same way; one that finds a live run ends.
    """
    settings = WorkerSettings()
    redis_client = redis.Redis.from_url(settings.redis_url)
    lease = Lease(redis_client, job_id, settings.job_lock_ttl_s)
    # the lease first, then the sent marker goes: the reconciler always sees one of them
    if not lease.acquire():
        log.info("training job %s: a live worker runs it; this task ends", job_id)
        return
    clear_sent(redis_client, job_id)
    try:
        with session_scope(settings.db_url) as session:
            job = session.get(Job, job_id)
            if job is None or JobStatus(job.status).finished:
                return
            if job.status == JobStatus.running:
                fail(session, job_id, TRAINING_LOST, settings)
                return
            options = dict(job.options or {})
            start_training(session, job_id)
        with Heartbeat(lease, settings.job_heartbeat_s, retake=True):
            _run_training_job(settings, job_id, options)
    finally:
        try:
            lease.release()
        except Exception as exc:  # the lease lapses by itself
            log.warning("training job %s: could not release the lease: %s", job_id, exc)


def _run_training_job(settings: WorkerSettings, job_id: str, options: dict[str, Any]) -> None:
    try:
        # the trainer's own modules (heavy imports) load only on a training worker
        from services.trainer.config import TrainerSettings
        from services.trainer.pipeline import run_training

        def path(name: str) -> Path | None:
            return Path(options[name]) if options.get(name) else None

        outcome = run_training(
            TrainerSettings(**(options.get("settings") or {})),
            data_csv=path("data_csv"),
            corrections=path("corrections"),
            base_model=options.get("base_model"),
            reporter=lambda message: log.info("training job %s: %s", job_id, message),
        )
    except Exception as exc:  # a failed run is recorded, not retried: it would fail the same way
        log.exception("training job %s failed", job_id)
        mark_failed(settings, job_id, f"{type(exc).__name__}: {exc}")
        return
    with session_scope(settings.db_url) as session:
        outcome_options = {**options, "outcome": {"version": outcome.version, **outcome.promotion.as_dict()}}
        finish_training(session, job_id, outcome.version, outcome_options, settings)
