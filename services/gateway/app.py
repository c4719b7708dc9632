"""The public HTTP API. `uvicorn services.gateway.app:create_app --factory --port 8000`.

Never imports torch, transformers or the inference core (tests/test_gateway.py proves it): the model lives in
the inference service, reached over pooled HTTP.

`create_app` puts the app together: the routers (one list, `ROUTERS`), the static mounts, the error handlers
(errors.py), the OpenAPI error shape (openapi.py) and the middleware (middleware.py). What a process holds
open (the DB session factory, the inference service's HTTP pool, the Redis client) is made once in its
lifespan and kept on `app.state`; each request gets a DB session that commits when the request ends
(deps.py `SessionDep`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis
from fastapi import APIRouter, FastAPI
from sqlalchemy.orm import sessionmaker

from services.gateway import docs, jobs, ops, routes_predict
from services.gateway.auth import key_cache
from services.gateway.client import InferenceClient
from services.gateway.errors import add_error_handlers
from services.gateway.metrics import GatewayMetrics
from services.gateway.middleware import BodyGuardMiddleware, request_observer
from services.gateway.openapi import use_error_shape
from services.gateway.review import coder, decisions, downloads, home, rows, signin, upload
from services.gateway.review.pages import ReviewAssets
from services.gateway.review.queue import ReviewCaches
from services.gateway.settings import GatewaySettings
from shared.db.session import get_engine
from shared.logs import RequestContextMiddleware, configure_logging

log = logging.getLogger("services.gateway")

# every router of the gateway, in the order the OpenAPI document lists them
ROUTERS: tuple[APIRouter, ...] = (
    routes_predict.router,
    jobs.router,
    signin.router,
    home.router,
    rows.router,
    decisions.router,
    upload.router,
    downloads.router,
    coder.router,
    ops.router,
    docs.router,
)

BROKER_TIMEOUT_S = 1  # /ready answers fast when Redis is down

DESCRIPTION = (
    "Codes job titles and duties descriptions to ISCO-08 with calibrated confidence, "
    "falling back to coarser groups when unsure. Authenticate with `Authorization: Bearer <key>` or "
    "`X-API-Key: <key>` (keys: `isco keys create NAME`); every key a request presents must be valid, and "
    "an `Authorization` header of another scheme is refused (401). Every error answer is "
    '`{"detail": ...}` (schema `ErrorResponse`): a list of `{field, reason, type}` for invalid input, '
    "an `{error, message}` object, or a sentence. Times are UTC (RFC 3339, ending in `Z`)."
)


def create_app(settings: GatewaySettings | None = None, *, inference_transport: Any = None) -> FastAPI:
    """Build the gateway. Tests pass their own settings (and optionally an httpx transport for inference)."""
    settings = settings or GatewaySettings()
    configure_logging("gateway", settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.ensure_dirs()
        app.state.session_factory = sessionmaker(get_engine(settings.db_url), expire_on_commit=False)
        app.state.inference = InferenceClient(settings, inference_transport)
        app.state.redis = redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=BROKER_TIMEOUT_S, socket_timeout=BROKER_TIMEOUT_S
        )
        log.info(
            "gateway started",
            extra={
                "inference_url": settings.inference_url,
                "auth": "disabled" if settings.auth_disabled else "api keys",
            },
        )
        try:
            yield
        finally:
            await app.state.inference.aclose()
            app.state.redis.close()

    app = FastAPI(
        title="ISCO-08 occupation coding API",
        version="1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by services/gateway/docs.py from local assets
        redoc_url=None,
    )
    metrics = GatewayMetrics()
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.key_cache = key_cache(settings.api_key_cache_s)
    app.state.review_caches = ReviewCaches()
    # batches above `sync_batch_limit` become jobs (202 + job URL)
    app.state.large_batch_handler = jobs.submit_batch_job

    add_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.mount(docs.ASSETS_PATH, docs.docs_assets(), name="docs-assets")
    app.mount("/review/static", ReviewAssets(), name="review_static")
    use_error_shape(app)

    app.add_middleware(BodyGuardMiddleware, max_bytes=settings.max_body_bytes)
    # outermost: sees every response
    app.add_middleware(RequestContextMiddleware, observe=request_observer(metrics))
    return app
