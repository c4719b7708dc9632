"""Typed dependency aliases for the gateway's routes (and the job/upload routers that the app includes).

async def route(settings: SettingsDep, principal: ApiKeyDep, inference: InferenceClientDep): ...
def route(session: SessionDep): ...   # commits when the request succeeds, rolls back otherwise
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from services.gateway.auth import (
    DEV_PRINCIPAL,
    UNAUTHORIZED,
    KeyCache,
    Principal,
    authenticate,
    hash_key,
    presented_keys,
)
from services.gateway.client import InferenceClient
from services.gateway.settings import GatewaySettings
from shared.db.session import transaction

RETRY_AFTER_S = "5"  # what a 503 for a dependency outage tells the client to wait
DATABASE_UNAVAILABLE = {
    "error": "database_unavailable",
    "message": "the metadata database is unavailable; retry shortly",
    "dependency": "database",
}


def get_settings(request: Request) -> GatewaySettings:
    return request.app.state.settings


def get_session_factory(request: Request) -> sessionmaker[Session]:
    return request.app.state.session_factory


def get_session(request: Request) -> Iterator[Session]:
    """One session per request, committed at the request boundary (helpers only flush)."""
    with transaction(get_session_factory(request)) as session:
        yield session


def get_inference_client(request: Request) -> InferenceClient:
    return request.app.state.inference


# Declared for the OpenAPI document (an "Authorize" button in /docs); the keys are read by presented_keys.
_bearer_scheme = HTTPBearer(auto_error=False, description="API key as a bearer token")
_header_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key")


async def require_api_key(
    request: Request,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer_scheme)] = None,
    _header: Annotated[str | None, Security(_header_scheme)] = None,
) -> Principal:
    """The caller's Principal; 401 unless every key presented is valid (auth disabled: dev mode, explicitly
    set). The first key (the bearer token, when there is one) names the caller."""
    settings: GatewaySettings = request.app.state.settings
    if settings.auth_disabled:
        return DEV_PRINCIPAL
    keys = presented_keys(request)
    if not keys:
        raise UNAUTHORIZED
    principals = []
    for key in keys:
        principal = await _principal(request, settings, key)
        if principal is None:
            raise UNAUTHORIZED
        principals.append(principal)
    request.state.principal = principals[0]
    return principals[0]


async def _principal(request: Request, settings: GatewaySettings, key: str) -> Principal | None:
    """The key's Principal (cached for `api_key_cache_s`), None when no active key matches."""
    if not key:
        return None
    cache: KeyCache | None = request.app.state.key_cache  # read and written on the event loop only
    key_hash = hash_key(key, settings.secret_key)
    principal = cache.get(key_hash) if cache is not None else None
    if principal is None:
        try:
            principal = await run_in_threadpool(_authenticate_in_session, request, key, settings.secret_key)
        except SQLAlchemyError as exc:  # the key store is down: the caller may retry, it is not their fault
            detail = {
                **DATABASE_UNAVAILABLE,
                "message": "the API key store (metadata database) is unavailable",
            }
            raise HTTPException(503, detail, {"Retry-After": RETRY_AFTER_S}) from exc
        if principal is not None and cache is not None:
            cache[key_hash] = principal
    return principal


def _authenticate_in_session(request: Request, key: str, secret: str) -> Principal | None:
    # its own short transaction: the key is checked before the route's session exists (and without one)
    with transaction(get_session_factory(request)) as session:
        return authenticate(session, key, secret)


SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
# scope="function": the commit runs before the response is sent, so a failed commit (the database went away)
# is answered as an error (503) instead of after a 200 has already gone out, and the connection is kept.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ApiKeyDep = Annotated[Principal, Depends(require_api_key)]
InferenceClientDep = Annotated[InferenceClient, Depends(get_inference_client)]
