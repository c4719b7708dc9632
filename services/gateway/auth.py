"""API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`; only a salted SHA-256 hash is stored.

A request may present both headers; every key it presents must be valid (the bearer token's key is the
caller), and an `Authorization` header of any other scheme is refused, so one wrong credential is never
outvoted by a right one.

The salt is the deployment's `secret_key` (a server-side pepper): a per-key random salt would make the
indexed lookup by hash impossible, and keys are 256-bit random tokens, so a dictionary attack has nothing to
work on. Keys are shown once, at creation. Revoked keys stop working within `api_key_cache_s` seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from cachetools import TTLCache
from fastapi import HTTPException, Request, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.tables import ApiKey, utcnow

KEY_PREFIX = "isco_"
DISPLAY_PREFIX_LEN = 12  # "isco_" + 7 characters: enough to tell keys apart in `isco keys list`


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key (id, name), or the dev-mode anonymous caller (key_id None)."""

    key_id: int | None
    name: str


DEV_PRINCIPAL = Principal(key_id=None, name="dev (auth disabled)")


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str, secret: str) -> str:
    return hmac.new(secret.encode(), key.encode(), hashlib.sha256).hexdigest()


def create_api_key(session: Session, name: str, secret: str) -> tuple[str, ApiKey]:
    """A new key (plaintext, returned only here) and its row (flushed, not committed)."""
    key = generate_key()
    row = ApiKey(name=name, prefix=key[:DISPLAY_PREFIX_LEN], key_hash=hash_key(key, secret))
    session.add(row)
    session.flush()
    return key, row


def list_api_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke_api_key(session: Session, ident: str) -> ApiKey | None:
    """Revoke by numeric id or by the displayed prefix; None when no such key."""
    query = (
        select(ApiKey).where(ApiKey.id == int(ident))
        if ident.isdigit()
        else select(ApiKey).where(ApiKey.prefix == ident)
    )
    row = session.scalars(query).first()
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row


def lookup_api_key(session: Session, key: str, secret: str) -> ApiKey | None:
    """The active (not revoked) key row for a presented key."""
    row = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(key, secret))).first()
    if row is None or row.revoked_at is not None:
        return None
    return row


def presented_keys(request: Request) -> list[str]:
    """Every key the request presents, the bearer token first: `Authorization: Bearer <key>`, `X-API-Key`.

    Each must be valid for the request to pass. An `Authorization` header that is not a bearer token (Basic,
    Digest, a bare value, an empty one, `Bearer` with nothing after it) is presented as "" (matches no key):
    it is refused like a wrong bearer token, whatever its scheme and whatever `X-API-Key` says beside it.
    """
    keys = []
    auth = request.headers.get("authorization")
    if auth is not None:  # present, even empty or blank: a credential that matches no key
        scheme, _, value = auth.strip().partition(" ")
        keys.append(value.strip() if scheme.lower() == "bearer" else "")
    header = request.headers.get("x-api-key", "").strip()
    if header:
        keys.append(header)
    return list(dict.fromkeys(keys))


KeyCache = TTLCache[str, Principal]  # key hash -> the validated key
KEY_CACHE_SIZE = 10_000  # bounded: a flood of distinct keys evicts the least recently used


def key_cache(ttl_s: float) -> KeyCache | None:
    """Validated keys for `ttl_s` seconds, so the hot path does not hit the DB on every request (None when
    caching is off)."""
    return TTLCache(maxsize=KEY_CACHE_SIZE, ttl=ttl_s) if ttl_s > 0 else None


UNAUTHORIZED = HTTPException(
    status_code=status.HTTP_401_UNAUTHORIZED,
    detail="a valid API key is required (Authorization: Bearer <key> or X-API-Key: <key>)",
    headers={"WWW-Authenticate": "Bearer"},
)


def authenticate(session: Session, key: str, secret: str) -> Principal | None:
    """Validate a key against the DB and record its use (flush; the caller commits)."""
    row = lookup_api_key(session, key, secret)
    if row is None:
        return None
    row.last_used_at = utcnow()
    session.flush()
    return Principal(key_id=row.id, name=row.name)
