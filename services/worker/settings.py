"""Worker settings (env prefix ISCO_): job limits from `JobSettings`, how to run the model from
`shared.predictor.PredictorConfig` (the inference service's too), which model and Celery worker options."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from shared.jobs.settings import JobSettings
from shared.model.resources import cpu_share
from shared.predictor import PredictorConfig


class WorkerSettings(JobSettings, PredictorConfig):
    """One Celery worker process type (cpu, gpu or training), its model (`PredictorConfig`) and its limits."""

    worker_type: Literal["cpu", "gpu", "training"] = Field(
        "cpu", description="which per-queue config to use (services/worker/configs/<type>.py)"
    )
    worker_concurrency: int = Field(
        1, ge=1, description="worker processes; torch threads are shared among them"
    )
    model_dir: Path | None = Field(
        None, description="fixed model directory; empty = the registry's best model"
    )
    # PredictorConfig's fields, with the worker's own default batch size (files, not single requests);
    # `device` auto and `torch_threads` unset are resolved per worker type by `predictor_settings`
    batch_size: int = Field(64, ge=1, le=4096, description="texts per forward pass (sorted by token length)")
    job_memo_entries: int = Field(
        20_000, ge=0, description="results remembered per job for repeated (title, duties, industry) records"
    )
    retry_max: int = Field(
        5, ge=0, description="retries of a job task after a transient error (DB, Redis, disk)"
    )
    retry_backoff_max_s: float = Field(300.0, gt=0, description="cap of the jittered exponential retry delay")

    def predictor_settings(self) -> WorkerSettings:
        """These settings with `device` and `torch_threads` resolved for this worker type: auto is cuda on a
        gpu worker, cpu otherwise; threads default to this process's CPU share / concurrency."""
        device = self.device
        if device == "auto":
            device = "cuda" if self.worker_type == "gpu" else "cpu"
        threads = self.torch_threads or max(1, cpu_share() // self.worker_concurrency)
        return self.model_copy(update={"device": device, "torch_threads": threads})
