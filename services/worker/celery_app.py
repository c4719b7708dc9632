"""The Celery app of the workers: `celery -A services.worker.celery_app worker -Q cpu` (or gpu, training).

The configuration module is chosen by ISCO_WORKER_TYPE (cpu, gpu, training): services/worker/configs/.
Importing this module loads no model and opens no connection; each worker process loads its model once, on
its first job. The tasks (services/worker/tasks.py, which imports `app` from here) also hold the start-up
reconciliation, so that this module never imports them back.
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import worker_process_init

from services.worker.settings import WorkerSettings

app = Celery("isco", include=["services.worker.tasks"])
app.config_from_object(f"services.worker.configs.{WorkerSettings().worker_type}")


@worker_process_init.connect
def _fresh_connections_after_fork(**_: object) -> None:
    # A forked child must not reuse the parent's DB connections or Redis sockets.
    # (The parent normally opens none; clearing the cache makes sure each child builds its own pool.)
    from shared.db.session import get_engine

    get_engine.cache_clear()
    logging.getLogger(__name__).debug("worker process initialised")
