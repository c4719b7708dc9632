"""The Celery app of the workers: `celery -A services.worker.celery_app worker -Q cpu` (or gpu, training).

The configuration module is chosen by ISCO_WORKER_TYPE (cpu, gpu, training): services/worker/configs/.
Importing this module loads no model and opens no connection; each worker process loads its model once, on
its first job. The tasks (services/worker/tasks.py, which imports `app` from here) also hold the start-up
reconciliation, so that this module never imports them back.
"""

from __future__ import annotations

from celery import Celery

from services.worker.settings import WorkerSettings

app = Celery("isco", include=["services.worker.tasks"])
app.config_from_object(f"services.worker.configs.{WorkerSettings().worker_type}")
