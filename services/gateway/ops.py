"""Operations endpoints: /health (the process is up), /ready (its dependencies answer), /metrics
(Prometheus)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from services.gateway.client import InferenceError
from shared.jobs.state import public_error

router = APIRouter(tags=["ops"])


class ReadyResponse(BaseModel):
    """GET /ready: 200 when everything is up, 503 naming what is down."""

    status: Literal["ready", "not ready"]
    down: list[str] = Field(description="the dependencies that are down: database, broker, inference")
    database: str = Field(description="`ok`, or why it is down")
    broker: str = Field(description="`ok`, or why it is down")
    inference: str = Field(description="`ok`, or why it is down")
    model_version: str | None = Field(None, description="the model the inference service serves, when up")


@router.get("/health", summary="process is up")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="database, broker and inference service reachable, model loaded",
    response_model=ReadyResponse,
    responses={
        503: {
            "model": ReadyResponse,
            "description": "not ready: the body names each dependency that is down, and why",
        }
    },
)
async def ready(request: Request) -> JSONResponse:
    state = request.app.state
    checks: dict[str, Any] = {}
    down: list[str] = []
    try:
        await run_in_threadpool(_ping_db, state.session_factory)
        checks["database"] = "ok"
    except Exception as exc:  # report, do not raise: /ready answers 503 with the reason
        down.append("database")
        checks["database"] = _reason(exc)
    try:
        await run_in_threadpool(state.redis.ping)
        checks["broker"] = "ok"
    except Exception as exc:
        down.append("broker")
        checks["broker"] = _reason(exc)
    try:
        inference = await state.inference.ready()
        checks["inference"] = "ok"
        checks["model_version"] = inference.get("model_version")
        if checks["model_version"]:
            state.metrics.saw_model_version(checks["model_version"])
    except InferenceError as exc:
        down.append("inference")
        checks["inference"] = exc.detail
    return JSONResponse(
        {"status": "not ready" if down else "ready", "down": down, **checks},
        status_code=503 if down else 200,
    )


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _ping_db(factory: sessionmaker[Session]) -> None:
    with factory() as session:
        session.execute(text("SELECT 1"))


def _reason(exc: Exception) -> str:
    """`down: <exception type>: <first line>` without server paths."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return public_error(f"down: {type(exc).__name__}: {first}")[:300]
