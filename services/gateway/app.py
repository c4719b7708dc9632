"""The public HTTP API. `uvicorn services.gateway.app:create_app --factory --port 8000`.

Never imports torch, transformers or the inference core (tests/test_gateway.py proves it): the model lives in
the inference service, reached over pooled HTTP.

Routers: predict (this package's routes_predict), plus the job machinery's `services.gateway.jobs.router` and
`services.gateway.uploads.router` when those modules exist. If `services.gateway.jobs` defines
`submit_batch_job(request, body: PredictRequest, principal) -> Response`, it answers batches above
`sync_batch_limit` (202 + job URL); until then they get 413 with the limit.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import kombu.exceptions
import redis
import redis.exceptions
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.orm import sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.auth import KeyCache
from services.gateway.client import InferenceClient, InferenceError
from services.gateway.deps import DATABASE_UNAVAILABLE, RETRY_AFTER_S
from services.gateway.metrics import GatewayMetrics
from services.gateway.routes_predict import reject_large_batch
from services.gateway.routes_predict import router as predict_router
from services.gateway.settings import GatewaySettings
from shared.db.session import get_engine
from shared.logs import REQUEST_ID_HEADER, RequestContextMiddleware, RequestObserver, configure_logging
from shared.schemas import ErrorResponse

log = logging.getLogger("services.gateway")

OPTIONAL_ROUTERS = ("services.gateway.jobs", "services.gateway.uploads", "services.gateway.review")


# ---------------------------------------------------------------------------------------------------------
# ASGI middleware (plain ASGI: BaseHTTPMiddleware costs too much on a path whose budget is milliseconds)
# ---------------------------------------------------------------------------------------------------------


def _observer(metrics: GatewayMetrics) -> RequestObserver:
    def observe(scope: Scope, route: str, status_code: int, elapsed: float) -> None:
        metrics.requests.labels(scope["method"], route, str(status_code)).inc()
        metrics.latency.labels(route).observe(elapsed)
        level = logging.DEBUG if route in ("/health", "/metrics") else logging.INFO
        log.log(
            level,
            "request",
            extra={
                "method": scope["method"],
                "path": scope["path"],
                "route": route,
                "status": status_code,
                "ms": round(elapsed * 1000, 2),
            },
        )

    return observe


class BodyGuardMiddleware:
    """JSON bodies: 413 above `max_bytes` (checked while reading, not trusting Content-Length) and 422 when
    not UTF-8. Multipart uploads pass through untouched: the upload route streams and limits them itself."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        content_type = (_header(scope, b"content-type") or "").lower()
        if content_type.startswith("multipart/"):
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            error = {
                "field": "body",
                "reason": f"request body is not valid UTF-8 (byte {exc.start})",
                "type": "unicode_decode",
            }
            await JSONResponse({"detail": [error]}, status_code=422)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = {
            "error": "too_large",
            "message": f"the request body is larger than {self.max_bytes} bytes",
            "limit": self.max_bytes,
        }
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


# ---------------------------------------------------------------------------------------------------------
# Error handlers: every error is JSON in the one shape of shared.schemas.ErrorResponse; a validation error
# names the field
# ---------------------------------------------------------------------------------------------------------


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] if len(parts) > 1 else parts
    return ".".join(parts)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # the input is never echoed back: it may be huge, or not encodable
    errors = []
    for e in exc.errors():
        if e.get("type") == "json_invalid":  # loc is ("body", <char position>)
            position = e.get("loc", ("body", "?"))[-1]
            problem = (e.get("ctx") or {}).get("error", "invalid JSON")
            errors.append(
                {
                    "field": "body",
                    "reason": f"invalid JSON at position {position}: {problem}",
                    "type": "json_invalid",
                }
            )
        else:
            errors.append(
                {
                    "field": _field(e.get("loc", ())),
                    "reason": e.get("msg", "invalid"),
                    "type": e.get("type", ""),
                }
            )
    return JSONResponse({"detail": errors}, status_code=422)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:  # a body that cannot be parsed (JSON, multipart): a client input problem
        detail = exc.detail
        if isinstance(detail, dict) and "message" in detail:
            error = {"field": "body", "reason": str(detail["message"]), "type": str(detail.get("error", ""))}
        else:
            error = {"field": "body", "reason": str(detail), "type": "body_parse"}
        return JSONResponse({"detail": [error]}, status_code=422)
    if exc.status_code == 405:
        allowed = allowed_methods(request.scope)
        if allowed and request.method == "OPTIONS":  # no route answers OPTIONS: say what the path takes
            return Response(status_code=204, headers={"Allow": ", ".join(allowed)})
        headers = {**(exc.headers or {}), **({"Allow": ", ".join(allowed)} if allowed else {})}
        return JSONResponse({"detail": exc.detail}, status_code=405, headers=headers)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


PROBED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(scope: Scope) -> list[str]:
    """Every method some route answers at this path, plus OPTIONS (for `Allow`). The framework's own 405
    names only the methods of the first route that matched the path, though a path such as /jobs/{id} has a
    route per method. Empty when only a mount (static files, which say their own) matches."""
    app = scope["app"]
    probe_base = {
        "type": "http",
        "path": scope["path"],
        "root_path": scope.get("root_path", ""),
        "headers": [],
        "query_string": b"",
        "path_params": {},
    }
    allowed = []
    for method in PROBED_METHODS:
        probe = {**probe_base, "method": method}
        for route in app.router.routes:
            match, _ = route.matches(probe)
            if match == Match.FULL:
                if not isinstance(route, Mount):
                    allowed.append(method)
                break
    return [*allowed, "OPTIONS"] if allowed else []


# A dependency that is down is the server's problem for a while, not a bug: 503 with the reason and a hint to
# retry, answered by the app (not the server-error middleware), so the client's keep-alive connection stays.
DB_OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    sqlalchemy.exc.DisconnectionError,
)
BROKER_OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
)


async def db_outage_handler(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", type(exc).__name__, extra={"path": request.url.path})
    return JSONResponse(
        {"detail": DATABASE_UNAVAILABLE}, status_code=503, headers={"Retry-After": RETRY_AFTER_S}
    )


async def broker_outage_handler(request: Request, exc: Exception) -> JSONResponse:
    log.warning("broker unavailable: %s", type(exc).__name__, extra={"path": request.url.path})
    detail = {
        "error": "queue_unavailable",
        "message": "the job queue (Redis) is unavailable; retry shortly",
        "dependency": "broker",
    }
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": RETRY_AFTER_S})


async def inference_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InferenceError)
    log.warning("inference call failed", extra={"status": exc.status_code, "reason": exc.detail})
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)


# ---------------------------------------------------------------------------------------------------------
# App factory
# ---------------------------------------------------------------------------------------------------------


class ReadyResponse(BaseModel):
    """GET /ready: 200 when everything is up, 503 naming what is down."""

    status: Literal["ready", "not ready"]
    down: list[str] = Field(description="the dependencies that are down: database, broker, inference")
    database: str = Field(description="`ok`, or why it is down")
    broker: str = Field(description="`ok`, or why it is down")
    inference: str = Field(description="`ok`, or why it is down")
    model_version: str | None = Field(None, description="the model the inference service serves, when up")


# ---------------------------------------------------------------------------------------------------------
# OpenAPI: every error answer references the one ErrorResponse schema
# ---------------------------------------------------------------------------------------------------------

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
# what any operation may answer, by what it takes: added where a route does not say it itself
IMPLIED_ERRORS = {
    "401": "missing or invalid API key",
    "413": "request body larger than the limit",
    "422": "invalid input: `detail` lists each problem (field, reason, type)",
    "503": "a dependency (database, job queue, inference service) is unavailable; retry after `Retry-After`",
}


def declare_error_shape(spec: dict[str, Any]) -> dict[str, Any]:
    """Make every 4xx/5xx answer of every operation in `spec` reference ErrorResponse (FastAPI declares its
    own {loc, msg, type} HTTPValidationError for 422, which this app never sends), and declare the errors an
    operation can meet whether or not its route lists them: 401 and 503 (the key store) where it needs a key,
    422 where it takes input, 413 where it takes a body."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(error_schema.pop("$defs", {}))
    schemas["ErrorResponse"] = error_schema
    for item in spec.get("paths", {}).values():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            responses = operation.setdefault("responses", {})
            implied = []
            if operation.get("security"):
                implied += ["401", "503"]
            if operation.get("parameters") or operation.get("requestBody"):
                implied.append("422")
            if operation.get("requestBody"):
                implied.append("413")
            for status in implied:
                responses.setdefault(status, {"description": IMPLIED_ERRORS[status]})
            for status, response in responses.items():
                if status[:1] not in ("4", "5") or _declares_own_body(response):
                    continue
                if response.get("description") == "Validation Error":  # FastAPI's wording for its own shape
                    response["description"] = IMPLIED_ERRORS["422"]
                response["content"] = {"application/json": {"schema": ERROR_REF}}
    for name in ("HTTPValidationError", "ValidationError"):
        if f'"#/components/schemas/{name}"' not in json.dumps(spec):
            schemas.pop(name, None)
    return spec


def _declares_own_body(response: dict[str, Any]) -> bool:
    """Whether an error response declares a body other than FastAPI's default validation error."""
    default = {"$ref": "#/components/schemas/HTTPValidationError"}
    return any(media.get("schema") != default for media in (response.get("content") or {}).values())


def create_app(settings: GatewaySettings | None = None, *, inference_transport: Any = None) -> FastAPI:
    """Build the gateway. Tests pass their own settings (and optionally an httpx transport for inference)."""
    settings = settings or GatewaySettings()
    configure_logging("gateway", settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.ensure_dirs()
        app.state.session_factory = sessionmaker(get_engine(settings.db_url), expire_on_commit=False)
        app.state.inference = InferenceClient(settings, inference_transport)
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

    app = FastAPI(
        title="ISCO-08 occupation coding API",
        version="1.0",
        description="Codes job titles and duties descriptions to ISCO-08 with calibrated confidence, "
        "falling back to coarser groups when unsure. Authenticate with `Authorization: Bearer <key>` or "
        "`X-API-Key: <key>` (keys: `isco keys create NAME`); every key a request presents must be valid, and "
        "an `Authorization` header of another scheme is refused (401). Every error answer is "
        '`{"detail": ...}` (schema `ErrorResponse`): a list of `{field, reason, type}` for invalid input, '
        "an `{error, message}` object, or a sentence. Times are UTC (RFC 3339, ending in `Z`).",
        lifespan=lifespan,
        docs_url=None,  # served by _add_docs_routes from local assets (the default loads them from a CDN)
        redoc_url=None,
    )
    metrics = GatewayMetrics()
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.key_cache = KeyCache(settings.api_key_cache_s)
    app.state.large_batch_handler = reject_large_batch

    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(InferenceError, inference_error_handler)
    for error in DB_OUTAGE_ERRORS:
        app.add_exception_handler(error, db_outage_handler)
    for error in BROKER_OUTAGE_ERRORS:
        app.add_exception_handler(error, broker_outage_handler)

    app.include_router(predict_router)
    _include_job_routers(app)
    _add_ops_routes(app)
    _add_docs_routes(app)
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = declare_error_shape(default_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    app.add_middleware(BodyGuardMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, observe=_observer(metrics))  # outermost: sees every response
    return app


def _include_job_routers(app: FastAPI) -> None:
    """The queue helper's routers, when present (the app works without them)."""
    for module_name in OPTIONAL_ROUTERS:
        if importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        router = getattr(module, "router", None)
        if router is not None:
            app.include_router(router)
        handler = getattr(module, "submit_batch_job", None)
        if handler is not None:
            app.state.large_batch_handler = handler


def _add_ops_routes(app: FastAPI) -> None:
    @app.get("/health", tags=["ops"], summary="process is up")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/ready",
        tags=["ops"],
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
        from starlette.concurrency import run_in_threadpool

        checks: dict[str, Any] = {}
        down: list[str] = []
        try:
            await run_in_threadpool(_ping_db, request.app.state.session_factory)
            checks["database"] = "ok"
        except Exception as exc:  # report, do not raise: /ready answers 503 with the reason
            down.append("database")
            checks["database"] = _reason(exc)
        try:
            await run_in_threadpool(_ping_broker, request.app.state.settings.redis_url)
            checks["broker"] = "ok"
        except Exception as exc:
            down.append("broker")
            checks["broker"] = _reason(exc)
        try:
            inference = await request.app.state.inference.ready()
            checks["inference"] = "ok"
            checks["model_version"] = inference.get("model_version")
            if checks["model_version"]:
                request.app.state.metrics.saw_model_version(checks["model_version"])
        except InferenceError as exc:
            down.append("inference")
            checks["inference"] = exc.detail
        return JSONResponse(
            {"status": "not ready" if down else "ready", "down": down, **checks},
            status_code=503 if down else 200,
        )

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _add_docs_routes(app: FastAPI) -> None:
    """/docs (Swagger UI) with its scripts and styles served by the gateway from the `swagger-ui-bundle`
    package, so the page works offline and behind a proxy prefix (root_path)."""
    from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from starlette.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> Response:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - docs",
            swagger_js_url=f"{root}/docs-assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs-assets/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs-assets/favicon-32x32.png",
            oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def docs_oauth2_redirect() -> Response:
        return get_swagger_ui_oauth2_redirect_html()


def _ping_db(factory: sessionmaker) -> None:  # type: ignore[type-arg]
    with factory() as session:
        session.execute(text("SELECT 1"))


_BROKER_CLIENTS: dict[str, Any] = {}


def _ping_broker(url: str) -> None:
    client = _BROKER_CLIENTS.get(url)
    if client is None:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        _BROKER_CLIENTS[url] = client
    client.ping()


def _reason(exc: Exception) -> str:
    """`down: <exception type>: <first line>` without server paths."""
    from shared.jobs.state import public_error

    first = (str(exc).strip().splitlines() or [""])[0]
    return public_error(f"down: {type(exc).__name__}: {first}")[:300]


__all__ = ["create_app", "REQUEST_ID_HEADER"]
