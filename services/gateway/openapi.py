"""The OpenAPI document: every error answer references the one ErrorResponse schema."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI

from shared.schemas import ErrorResponse

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


def use_error_shape(app: FastAPI) -> None:
    """Serve `declare_error_shape` of the document FastAPI builds (built once, on first request)."""
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = declare_error_shape(default_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
