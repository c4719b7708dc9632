"""Inference service settings (env prefix ISCO_); the predictor fields match PredictorConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from shared.schemas import Thresholds
from shared.settings import CommonSettings


class InferenceSettings(CommonSettings):
    """The model service: which model, how to run it, how to batch."""

    model_dir: Path | None = Field(
        None, description="serve this model directory; default: the registry's best"
    )
    reload_interval_s: float = Field(
        30.0, ge=0, description="poll the registry for a new best model (0: never)"
    )
    # shared.predictor.PredictorConfig
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    backend: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="auto: torch on CUDA, else ONNX Runtime (the same default as the workers)"
    )
    quantize: Literal["none", "int8"] = Field(
        "int8", description="int8 on CPU: ONNX Runtime static (batched), torch dynamic (one record per call)"
    )
    torch_threads: int | None = Field(None, ge=1, description="default: the CPUs this process may use")
    batch_size: int = Field(32, ge=1, description="texts per forward pass")
    cache_size: int = Field(20_000, ge=0, description="LRU entries of text -> probabilities")
    thresholds: Thresholds = Field(
        default_factory=lambda: Thresholds(), description="default per-level thresholds"
    )
    # micro-batching
    batch_wait_ms: float = Field(2.0, ge=0, description="longest wait for more concurrent requests")
    max_batch_records: int = Field(512, ge=1, description="records gathered into one model call at most")
    max_request_records: int = Field(4096, ge=1, description="records in one request at most (413 above)")
