"""Worker settings (env prefix ISCO_): job limits from `JobSettings`, model and Celery worker options."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from shared.jobs.settings import JobSettings
from shared.model.resources import cpu_share
from shared.schemas import Thresholds


class WorkerSettings(JobSettings):
    """One Celery worker process type (cpu, gpu or training), its model and its limits."""

    worker_type: Literal["cpu", "gpu", "training"] = Field(
        "cpu", description="which per-queue config to use (services/worker/configs/<type>.py)"
    )
    worker_concurrency: int = Field(
        1, ge=1, description="worker processes; torch threads are shared among them"
    )
    model_dir: Path | None = Field(
        None, description="fixed model directory; empty = the registry's best model"
    )
    # PredictorConfig fields (shared.predictor), same names as in the inference service
    device: str = Field(
        "auto", description="auto = cuda on a gpu worker, cpu otherwise; or cpu | cuda | cuda:N"
    )
    backend: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="auto: torch on CUDA, else ONNX Runtime (as in the inference service)"
    )
    quantize: Literal["none", "int8"] = Field(
        "int8", description="int8 on CPU: ONNX Runtime static (batched), torch dynamic (one record per call)"
    )
    torch_threads: int | None = Field(
        None, ge=1, description="default: this process's CPU share / concurrency"
    )
    batch_size: int = Field(64, ge=1, le=4096)
    cache_size: int = Field(20_000, ge=0)
    thresholds: Thresholds = Field(default_factory=lambda: Thresholds())
    job_memo_entries: int = Field(
        20_000, ge=0, description="results remembered per job for repeated (title, duties, industry) records"
    )
    retry_max: int = Field(
        5, ge=0, description="retries of a job task after a transient error (DB, Redis, disk)"
    )
    retry_backoff_max_s: float = Field(300.0, gt=0, description="cap of the jittered exponential retry delay")

    def predictor_settings(self) -> WorkerSettings:
        """These settings with `device` and `torch_threads` resolved for this worker type."""
        device = self.device
        if device == "auto":
            device = "cuda" if self.worker_type == "gpu" else "cpu"
        threads = self.torch_threads or max(1, cpu_share() // self.worker_concurrency)
        return self.model_copy(update={"device": device, "torch_threads": threads})
