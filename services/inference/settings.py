"""Inference service settings (env prefix ISCO_): how to run the model from `shared.predictor.PredictorConfig`
(the workers' too), which model, and the micro-batching limits."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.predictor import PredictorConfig
from shared.settings import CommonSettings


class InferenceSettings(CommonSettings, PredictorConfig):
    """The model service: which model, how to run it (`PredictorConfig`), how to batch."""

    model_dir: Path | None = Field(
        None, description="serve this model directory; default: the registry's best"
    )
    reload_interval_s: float = Field(
        30.0, ge=0, description="poll the registry for a new best model (0: never)"
    )
    # micro-batching
    batch_wait_ms: float = Field(2.0, ge=0, description="longest wait for more concurrent requests")
    max_batch_records: int = Field(512, ge=1, description="records gathered into one model call at most")
    max_request_records: int = Field(4096, ge=1, description="records in one request at most (413 above)")
