"""The model service. `uvicorn services.inference.app:create_app --factory --port 8001`.

Holds one Predictor (loaded once in the lifespan, hot-swapped when the registry's best model changes),
micro-batches concurrent requests into one forward pass on a dedicated model thread, and exposes
POST /v1/predict, /health, /ready and Prometheus /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import Scope

from services.inference.batching import MicroBatcher, ModelNotReady
from services.inference.settings import InferenceSettings
from shared.decision import record_text
from shared.holder import PredictorHolder
from shared.logs import RequestContextMiddleware, RequestObserver, configure_logging
from shared.predictor import Predictor
from shared.schemas import EvidenceExample, Prediction, PredictOptions, PredictRequest, PredictResponse

EVIDENCE_EXAMPLES = 10  # nearest training examples per record with explain=true

log = logging.getLogger("services.inference")

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class InferenceMetrics:
    """Prometheus metrics with the app's own registry (several apps per process in tests)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("isco_inference_requests", "HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram(
            "isco_inference_request_seconds",
            "request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_records = Histogram(
            "isco_inference_batch_records", "records per model call", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "isco_inference_batch_requests",
            "requests merged into one model call",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "isco_inference_batch_seconds", "model call duration", buckets=LATENCY_BUCKETS, registry=r
        )
        self.records = Counter("isco_inference_records", "records coded", registry=r)
        self.cache_hits = Gauge(
            "isco_inference_cache_hits", "probability cache hits (current model)", registry=r
        )
        self.cache_misses = Gauge("isco_inference_cache_misses", "probability cache misses", registry=r)
        self.model_info = Gauge(
            "isco_inference_model_info", "loaded model (value 1)", ["version"], registry=r
        )
        self.model_loaded_at = Gauge(
            "isco_inference_model_loaded_timestamp", "when it was loaded", registry=r
        )
        self._version: str | None = None

    def observe_batch(self, *, requests: int, records: int, seconds: float, predictor: Predictor) -> None:
        self.batch_requests.observe(requests)
        self.batch_records.observe(records)
        self.batch_seconds.observe(seconds)
        self.records.inc(records)
        self.cache_hits.set(predictor.cache.hits)
        self.cache_misses.set(predictor.cache.misses)

    def model_loaded(self, predictor: Predictor) -> None:
        if self._version is not None and self._version != predictor.version:
            self.model_info.remove(self._version)
        self.model_info.labels(version=predictor.version).set(1)
        self.model_loaded_at.set_to_current_time()
        self._version = predictor.version


def _observer(metrics: InferenceMetrics) -> RequestObserver:
    def observe(scope: Scope, route: str, status_code: int, elapsed: float) -> None:
        metrics.requests.labels(route, str(status_code)).inc()
        metrics.latency.labels(route).observe(elapsed)
        if route == "/v1/predict" or status_code >= 400:
            log.info(
                "request",
                extra={"path": scope["path"], "status": status_code, "ms": round(elapsed * 1000, 2)},
            )

    return observe


def create_app(settings: InferenceSettings | None = None, *, predictor: Predictor | None = None) -> FastAPI:
    """Build the model service. Tests may pass a ready Predictor (then none is loaded from the registry)."""
    settings = settings or InferenceSettings()
    configure_logging("inference", settings.log_level)
    metrics = InferenceMetrics()
    holder = PredictorHolder(settings)
    holder.listeners.append(metrics.model_loaded)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        if predictor is not None:
            holder.set(predictor)
        else:
            await loop.run_in_executor(None, holder.check)  # load once, off the event loop
            if holder.current is None:
                log.warning("no model loaded yet; polling the registry", extra={"error": holder.last_error})
        batcher = MicroBatcher(
            holder,
            max_records=settings.max_batch_records,
            max_wait_s=settings.batch_wait_ms / 1000,
            metrics=metrics,
        )
        app.state.batcher = batcher
        batcher.start()
        poller = None
        if settings.reload_interval_s > 0 and predictor is None:
            poller = loop.create_task(_poll_registry(holder, settings.reload_interval_s), name="model-reload")
        try:
            yield
        finally:
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            await batcher.stop()

    app = FastAPI(title="ISCO-08 inference service", version="1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.holder = holder
    app.state.metrics = metrics

    @app.post("/v1/predict", response_model=PredictResponse, summary="Code a list of records")
    async def predict(body: PredictRequest, request: Request) -> Response:
        if len(body.records) > settings.max_request_records:
            raise HTTPException(
                413,
                f"{len(body.records)} records in one request; the limit is {settings.max_request_records}",
            )
        options = PredictOptions(top_k=body.top_k, thresholds=body.thresholds)
        try:
            version, results = await request.app.state.batcher.submit(body.records, options)
        except ModelNotReady as exc:
            raise HTTPException(503, f"model not ready: {exc}") from exc
        if body.explain:
            await _add_evidence(holder, body, results)
        payload = PredictResponse(model_version=version, results=results)
        return Response(payload.model_dump_json(), media_type="application/json")

    @app.get("/health", summary="process is up")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="model loaded")
    async def ready() -> JSONResponse:
        current = holder.current
        if current is None:
            body: dict[str, Any] = {
                "status": "not ready",
                "reason": holder.last_error or "no model loaded yet",
            }
            return JSONResponse(body, status_code=503)
        return JSONResponse(
            {
                "status": "ready",
                "model_version": current.version,
                "model_dir": str(current.model_dir) if current.model_dir else None,
                "backend": current.config.backend,
                "quantize": current.config.quantize,
                "reload_error": holder.last_error,
            }
        )

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(RequestContextMiddleware, observe=_observer(metrics))
    return app


async def _add_evidence(holder: PredictorHolder, body: PredictRequest, results: list[Prediction]) -> None:
    """explain=true: each result gets the nearest training examples (one encoder pass, off the event loop)."""
    predictor = holder.current
    if predictor is None:
        return
    texts = [record_text(record)[0] for record in body.records]
    nearest = await asyncio.to_thread(predictor.nearest_examples, texts, EVIDENCE_EXAMPLES)
    for result, examples in zip(results, nearest, strict=True):
        result.evidence = [
            EvidenceExample(text=t, unit_code=c, similarity=round(float(s), 4)) for t, c, s in examples
        ]


async def _poll_registry(holder: PredictorHolder, interval_s: float) -> None:
    """Check for a new best model every interval; loading runs in a worker thread while requests go on."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval_s)
        await loop.run_in_executor(None, holder.check)
