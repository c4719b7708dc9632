"""Sign-in for the review page: an API key becomes a signed, httpOnly, SameSite session cookie; every form
carries a CSRF token.

The cookie holds {key id, key name, CSRF token, issue time}, signed with HMAC-SHA256 under a key derived from
the deployment's `secret_key` (so it cannot be forged or altered), never the API key itself. Every request
re-checks that the key still exists and is not revoked. The CSRF token is the synchronizer-token pattern: it
lives in the signed session and in each form (or the X-CSRF-Token header of the page's fetch calls), and a
POST without the matching token is refused; the sign-in form, before any session exists, uses a double-submit
cookie. A POST whose Origin header names another site is refused as well.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import HTTPException, Request, Response
from sqlalchemy.orm import Session

from services.gateway.auth import DEV_PRINCIPAL, Principal
from services.gateway.settings import GatewaySettings
from shared.db.tables import ApiKey

SESSION_COOKIE = "isco_review"
LOGIN_CSRF_COOKIE = "isco_review_login"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
COOKIE_PATH = "/review"


# a key registered from the environment at start-up (`make run` with ISCO_API_KEY) is named after the variable
_VARIABLE_NAME = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")
STARTUP_KEY_LABEL = "start-up key"


@dataclass(frozen=True)
class ReviewSession:
    principal: Principal
    csrf: str
    prefix: str = ""  # the key's display prefix, as `isco keys list` shows it

    @property
    def label(self) -> str:
        """The key's label for people: its name, unless that is an environment variable's name."""
        name = self.principal.name
        return STARTUP_KEY_LABEL if _VARIABLE_NAME.fullmatch(name) else name


def _signing_key(settings: GatewaySettings) -> bytes:
    # a key of its own, so that a cookie signature can never double as an API key hash
    return hmac.new(settings.secret_key.encode(), b"isco-review-session-v1", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(settings: GatewaySettings, payload: Mapping[str, object]) -> str:
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    mac = _b64(hmac.new(_signing_key(settings), body.encode(), hashlib.sha256).digest())
    return f"{body}.{mac}"


def unsign(settings: GatewaySettings, value: str) -> dict[str, object] | None:
    body, _, mac = value.partition(".")
    expected = _b64(hmac.new(_signing_key(settings), body.encode(), hashlib.sha256).digest())
    if not mac or not hmac.compare_digest(mac, expected):
        return None
    try:
        payload = json.loads(_unb64(body))
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _secure(request: Request, settings: GatewaySettings) -> bool:
    return settings.review_cookie_secure or settings.env == "prod" or request.url.scheme == "https"


def start_session(
    request: Request, response: Response, settings: GatewaySettings, principal: Principal
) -> None:
    """Set the session cookie for a signed-in key (and drop the sign-in form's CSRF cookie)."""
    payload = {
        "k": principal.key_id,
        "n": principal.name,
        "c": secrets.token_urlsafe(24),
        "t": int(time.time()),
    }
    response.set_cookie(
        SESSION_COOKIE,
        sign(settings, payload),
        max_age=int(settings.review_session_hours * 3600),
        path=COOKIE_PATH,
        httponly=True,
        samesite="lax",
        secure=_secure(request, settings),
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path=COOKIE_PATH)


def end_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="lax")


def read_session(request: Request, session: Session, settings: GatewaySettings) -> ReviewSession | None:
    """The signed-in key, or None (no cookie, bad signature, expired, or the key was revoked)."""
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw:
        return None
    payload = unsign(settings, raw)
    if payload is None:
        return None
    issued, csrf, key_id = payload.get("t"), payload.get("c"), payload.get("k")
    if not isinstance(issued, int) or not isinstance(csrf, str):
        return None
    if time.time() - issued > settings.review_session_hours * 3600:
        return None
    if key_id is None:
        return ReviewSession(DEV_PRINCIPAL, csrf) if settings.auth_disabled else None
    if not isinstance(key_id, int):
        return None
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return None
    return ReviewSession(Principal(key_id=row.id, name=row.name), csrf, row.prefix)


def login_token(request: Request, settings: GatewaySettings) -> str:
    """The sign-in form's CSRF token: the one in the browser's sign-in cookie, or a new one."""
    current = request.cookies.get(LOGIN_CSRF_COOKIE)
    payload = unsign(settings, current) if current else None
    token = payload.get("c") if payload else None
    return token if isinstance(token, str) else secrets.token_urlsafe(24)


def set_login_cookie(request: Request, response: Response, settings: GatewaySettings, token: str) -> None:
    """The double-submit cookie of the sign-in form (signed, httpOnly, SameSite=Strict)."""
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        sign(settings, {"c": token}),
        max_age=3600,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=_secure(request, settings),
    )


CSRF_FAILED = HTTPException(
    403, detail={"error": "csrf", "message": "missing or invalid CSRF token; reload the page"}
)


def check_origin(request: Request) -> None:
    """Refuse a POST whose Origin names another site (browsers send it on cross-site form posts)."""
    origin = request.headers.get("origin")
    if origin is None:
        return
    # hostnames only: behind the TLS proxy the port the browser used is not the one the gateway sees
    host = request.headers.get("host", "").rsplit(":", 1)[0].strip("[]")
    if origin == "null" or urlsplit(origin).hostname != host:
        raise CSRF_FAILED


def check_csrf(request: Request, expected: str, submitted: str | None) -> None:
    """403 unless the submitted token (form field or X-CSRF-Token header) matches the session's."""
    check_origin(request)
    token = submitted or request.headers.get(CSRF_HEADER) or ""
    if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
        raise CSRF_FAILED


def check_login_csrf(request: Request, settings: GatewaySettings, submitted: str | None) -> None:
    raw = request.cookies.get(LOGIN_CSRF_COOKIE)
    payload = unsign(settings, raw) if raw else None
    expected = payload.get("c") if payload else None
    check_csrf(request, expected if isinstance(expected, str) else "", submitted)
