"""Sign-in for the review page: an API key becomes a signed, httpOnly, SameSite session cookie; every form
carries a CSRF token.

The cookie holds {key id, key name, CSRF token} and its issue time, signed by `itsdangerous` (HMAC-SHA256
under a key derived from the deployment's `secret_key` and a salt of the cookie's own, so it cannot be forged,
altered or swapped for another cookie), never the API key itself; a cookie older than `review_session_hours`
is refused whatever the browser keeps. Every request re-checks that the key still exists and is not revoked
(`ReviewerDep`). The CSRF token is the synchronizer-token pattern: it
lives in the signed session and in each form (or the X-CSRF-Token header of the page's fetch calls), and a
POST without the matching token is refused; the sign-in form, before any session exists, uses a double-submit
cookie. A POST whose Origin header names another site is refused as well.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy.orm import Session

from services.gateway.auth import DEV_PRINCIPAL, Principal
from services.gateway.deps import SessionDep, SettingsDep
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


# the salts keep a cookie's signature from doubling as another cookie's, or as an API key's hash
SESSION_SALT = "isco-review-session-v2"
LOGIN_SALT = "isco-review-login-v2"
LOGIN_MAX_AGE_S = 3600


def _serializer(settings: GatewaySettings, salt: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(
        settings.secret_key, salt=salt, signer_kwargs={"digest_method": hashlib.sha256}
    )


def sign(settings: GatewaySettings, payload: Mapping[str, object], salt: str = SESSION_SALT) -> str:
    """The payload as a signed, time-stamped cookie value."""
    return _serializer(settings, salt).dumps(dict(payload))


def unsign(
    settings: GatewaySettings, value: str, salt: str = SESSION_SALT, max_age_s: int | None = None
) -> dict[str, object] | None:
    """The payload of a cookie value `sign` wrote under `salt`, or None: bad signature, not a mapping, or
    older than `max_age_s` (default: the session's `review_session_hours`)."""
    max_age = round(settings.review_session_hours * 3600 if max_age_s is None else max_age_s)
    try:
        payload = _serializer(settings, salt).loads(value, max_age=max_age)
    except BadSignature:  # SignatureExpired is one too
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
    csrf, key_id = payload.get("c"), payload.get("k")
    if not isinstance(csrf, str):
        return None
    if key_id is None:
        return ReviewSession(DEV_PRINCIPAL, csrf) if settings.auth_disabled else None
    if not isinstance(key_id, int):
        return None
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return None
    return ReviewSession(Principal(key_id=row.id, name=row.name), csrf, row.prefix)


def require_reviewer(request: Request, session: SessionDep, settings: SettingsDep) -> ReviewSession:
    """The review page's signed-in key; without a valid session, 303 to the sign-in page."""
    current = read_session(request, session, settings)
    if current is None:
        raise HTTPException(303, headers={"Location": str(request.url_for("review_login"))})
    return current


ReviewerDep = Annotated[ReviewSession, Depends(require_reviewer)]


def login_token(request: Request, settings: GatewaySettings) -> str:
    """The sign-in form's CSRF token: the one in the browser's sign-in cookie, or a new one."""
    current = request.cookies.get(LOGIN_CSRF_COOKIE)
    payload = unsign(settings, current, LOGIN_SALT, LOGIN_MAX_AGE_S) if current else None
    token = payload.get("c") if payload else None
    return token if isinstance(token, str) else secrets.token_urlsafe(24)


def set_login_cookie(request: Request, response: Response, settings: GatewaySettings, token: str) -> None:
    """The double-submit cookie of the sign-in form (signed, httpOnly, SameSite=Strict)."""
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        sign(settings, {"c": token}, LOGIN_SALT),
        max_age=LOGIN_MAX_AGE_S,
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
    payload = unsign(settings, raw, LOGIN_SALT, LOGIN_MAX_AGE_S) if raw else None
    expected = payload.get("c") if payload else None
    check_csrf(request, expected if isinstance(expected, str) else "", submitted)
