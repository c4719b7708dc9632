"""The gateway's ASGI middleware: plain ASGI, since BaseHTTPMiddleware costs too much on a path whose budget
is milliseconds. The request observer records each request's metrics and log line (shared.logs runs it).
"""

from __future__ import annotations

import logging

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.metrics import GatewayMetrics
from shared.logs import RequestObserver

log = logging.getLogger("services.gateway")


def request_observer(metrics: GatewayMetrics) -> RequestObserver:
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
