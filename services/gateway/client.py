"""Pooled async client for the inference service: timeouts, retries on connect errors, request id."""

from __future__ import annotations

import json
from typing import Any

import httpx

from services.gateway.settings import GatewaySettings
from shared.logs import REQUEST_ID_HEADER, request_id_var


class InferenceError(Exception):
    """The inference service could not answer; `status_code` is what the gateway returns."""

    def __init__(self, status_code: int, detail: str):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


class InferenceClient:
    def __init__(self, settings: GatewaySettings, transport: httpx.AsyncBaseTransport | None = None):
        # The transport's own retries cover connect errors only, i.e. requests that never reached the
        # service, so retrying can never run a prediction twice.
        limits = httpx.Limits(
            max_connections=settings.inference_pool_size,
            max_keepalive_connections=settings.inference_pool_size,
        )
        # limits go to the transport: a client given its own transport ignores its `limits` argument
        self._client = httpx.AsyncClient(
            base_url=settings.inference_url,
            timeout=httpx.Timeout(settings.inference_timeout_s, connect=settings.inference_connect_timeout_s),
            transport=transport
            or httpx.AsyncHTTPTransport(retries=settings.inference_retries, limits=limits),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def _headers(self) -> dict[str, str]:
        request_id = request_id_var.get()
        return {REQUEST_ID_HEADER: request_id} if request_id else {}

    async def _request(
        self, method: str, path: str, content: bytes | None = None, content_type: str | None = None
    ) -> httpx.Response:
        headers = self._headers()
        if content_type:
            headers["Content-Type"] = content_type
        try:
            return await self._client.request(method, path, content=content, headers=headers)
        except httpx.TimeoutException as exc:
            raise InferenceError(504, f"inference service timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise InferenceError(503, f"inference service unreachable ({type(exc).__name__})") from exc

    async def predict_raw(self, payload: dict[str, Any]) -> bytes:
        """POST /v1/predict; the PredictResponse JSON bytes unchanged (no re-validation on the hot path)."""
        response = await self._request(
            "POST", "/v1/predict", content=json.dumps(payload).encode(), content_type="application/json"
        )
        if response.status_code == 200:
            return response.content
        raise InferenceError(*_map_error(response))

    async def ready(self) -> dict[str, Any]:
        """The inference service's /ready body; raises InferenceError when it is not ready."""
        response = await self._request("GET", "/ready")
        if response.status_code == 200:
            return response.json()
        raise InferenceError(503, f"inference service not ready: {response.text[:200]}")


def _map_error(response: httpx.Response) -> tuple[int, str]:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if response.status_code == 503:
        return 503, f"inference service not ready: {detail}"
    if response.status_code in (413, 422):  # our request was refused: pass the reason on
        return response.status_code, str(detail)
    return 502, f"inference service error {response.status_code}: {str(detail)[:300]}"
