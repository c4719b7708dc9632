"""Error answers: every error is JSON in the one shape of shared.schemas.ErrorResponse, a validation error
names the field, and a dependency that is down (database, broker, inference service) is a 503 with a hint
to retry.
"""

from __future__ import annotations

import logging
from typing import Any

import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match, Mount
from starlette.types import Scope

from services.gateway.client import InferenceError
from services.gateway.deps import DATABASE_UNAVAILABLE, RETRY_AFTER_S

log = logging.getLogger("services.gateway")


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


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(InferenceError, inference_error_handler)
    for error in DB_OUTAGE_ERRORS:
        app.add_exception_handler(error, db_outage_handler)
    for error in BROKER_OUTAGE_ERRORS:
        app.add_exception_handler(error, broker_outage_handler)
