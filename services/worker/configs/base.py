"""Celery settings every worker type shares. The DB row is the job: no result backend, results ignored."""

from __future__ import annotations

from kombu import Queue

from services.worker.constants import (
    QUEUE_CPU,
    QUEUE_GPU,
    QUEUE_TRAINING,
    TASK_PROCESS_JOB,
    TASK_RECONCILE,
    TASK_SWEEP_EXPIRED,
    TASK_TRAIN,
)
from services.worker.settings import WorkerSettings

_settings = WorkerSettings()

broker_url = _settings.redis_url
broker_connection_retry_on_startup = True
# An unacknowledged task (its worker's main process died) goes back to the queue after this long; the
# reconciler (below) does not wait for that: it re-sends a job as soon as its worker's lease lapses, and the
# lease stops a redelivered task from running a job that a live worker still holds.
broker_transport_options = {"visibility_timeout": _settings.broker_visibility_timeout_s}
result_backend = None
task_ignore_result = True
task_store_errors_even_if_ignored = False

task_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True

# A task is acknowledged only when it finished; a killed worker's task is redelivered to the next worker.
task_acks_late = True
task_reject_on_worker_lost = True
# One task at a time per process: model work is long, and a prefetched task would wait behind it.
worker_prefetch_multiplier = 1
worker_cancel_long_running_tasks_on_connection_loss = True

task_default_queue = QUEUE_CPU
task_queues = [Queue(QUEUE_CPU), Queue(QUEUE_GPU), Queue(QUEUE_TRAINING)]
task_routes = {
    TASK_PROCESS_JOB: {"queue": _settings.job_queue},
    TASK_RECONCILE: {"queue": _settings.job_queue},
    TASK_TRAIN: {"queue": QUEUE_TRAINING},
}
task_create_missing_queues = True

# A job task hands over after the soft limit (it re-queues itself and resumes from its last chunk);
# the hard limit ends a task that ignores the soft one.
task_soft_time_limit: float | None = _settings.celery_task_soft_time_limit_s
task_time_limit = _settings.celery_task_soft_time_limit_s + 120

worker_concurrency = _settings.worker_concurrency
worker_hijack_root_logger = False
worker_send_task_events = False

# Beat (`celery -A services.worker.celery_app beat`, or `worker -B` on one machine): re-send jobs that no
# live worker holds (a dead worker, a broker that lost its queue), and delete expired files hourly (workers
# also sweep after every job). A reconcile message expires before the next one, so they do not pile up
# behind a long job.
beat_schedule = {
    "reconcile-jobs": {
        "task": TASK_RECONCILE,
        "schedule": _settings.job_reconcile_interval_s,
        "options": {"queue": _settings.job_queue, "expires": _settings.job_reconcile_interval_s},
    },
    "sweep-expired-jobs": {"task": TASK_SWEEP_EXPIRED, "schedule": 3600.0, "options": {"queue": QUEUE_CPU}},
}
