"""Synchronous coding: POST /predict/job (one record) and POST /predict/batch (a list, same order).

Over-long text is truncated, not refused: a field longer than MAX_TEXT_CHARS characters (the optional
`industry`: INDUSTRY_MAX_CHARS) is cut to that length and the result says `truncated: true` (the model reads
at most ~128 tokens anyway). The request body as a whole is bounded by `max_body_bytes` (413).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import Field

from services.gateway.auth import Principal
from services.gateway.deps import ApiKeyDep, InferenceClientDep, SettingsDep
from shared.jobs.views import JobAccepted
from shared.schemas import (
    MAX_TEXT_CHARS,
    JobRecord,
    JsonInt,
    Prediction,
    PredictRequest,
    PredictResponse,
    Thresholds,
)
from shared.text import INDUSTRY_MAX_CHARS

router = APIRouter(tags=["predict"])


class JobPredictRequest(JobRecord):
    """One record plus per-request options."""

    top_k: JsonInt = Field(5, ge=1, le=20, description="number of alternatives")
    thresholds: Thresholds | None = Field(
        None, description="per-level confidence thresholds (default 0.5 each)"
    )
    explain: bool = Field(False, description="add `evidence`: the nearest training examples")


# Bodies: every one is shared.schemas.ErrorResponse (the app's OpenAPI declares it for every error answer).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid API key"},
    413: {"description": "request body or batch too large"},
    422: {"description": "invalid input: `detail` lists each problem (field, reason, type)"},
    502: {"description": "inference service failed"},
    503: {"description": "inference service unavailable or no model loaded"},
    504: {"description": "inference service timed out"},
}

JOB_EXAMPLES = {
    "teacher": {
        "summary": "title and duties",
        "value": {
            "id": "row-17",
            "job_title": "primary school teacher",
            "duties_description": "teaches reading, writing and arithmetic to children aged 6 to 11",
        },
    },
    "with_industry": {
        "summary": "title with the employer's industry",
        "value": {"job_title": "inspector", "industry": "paper manufacturing"},
    },
    "title_only": {
        "summary": "title only, stricter unit threshold",
        "value": {"job_title": "welder", "top_k": 3, "thresholds": {"unit": 0.7}},
    },
}

BATCH_EXAMPLES = {
    "two": {
        "summary": "three records, one with the employer's industry",
        "value": {
            "records": [
                {
                    "id": "1",
                    "job_title": "registered nurse",
                    "duties_description": "cares for patients on a ward",
                },
                {"id": "2", "job_title": "truck driver", "duties_description": "drives heavy goods vehicles"},
                {"id": "3", "job_title": "inspector", "industry": "paper manufacturing"},
            ],
            "top_k": 3,
        },
    }
}


# a record's fields that /predict/job forwards to the inference service
RECORD_FIELDS = ("id", "job_title", "duties_description", "industry", "language")


def ensure_encodable(records: Sequence[JobRecord], prefix: str) -> None:
    """422 for strings that cannot be written as UTF-8 (lone surrogates from JSON "\\ud800" escapes)."""
    errors = []
    for i, record in enumerate(records):
        for name in RECORD_FIELDS:
            value = getattr(record, name)
            if value is None:
                continue
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                loc = ("body", name) if prefix == "" else ("body", prefix, i, name)
                errors.append(
                    {
                        "type": "string_unicode",
                        "loc": loc,
                        "msg": "text is not valid Unicode (lone surrogate escape)",
                        "input": None,
                    }
                )
    if errors:
        raise RequestValidationError(errors)


LargeBatchHandler = Callable[[Request, PredictRequest, Principal], Awaitable[Response]]


async def reject_large_batch(request: Request, body: PredictRequest, principal: Principal) -> Response:
    """Above the synchronous limit: 413. The job machinery replaces this (app.state.large_batch_handler)."""
    limit = request.app.state.settings.sync_batch_limit
    raise HTTPException(
        413,
        detail={
            "error": "too_many_records",
            "message": f"{len(body.records)} records is above the synchronous batch limit; send at most "
            f"{limit} per request or upload a CSV to /predict/csv",
            "limit": limit,
            "records": len(body.records),
        },
    )


async def _infer(request: Request, inference: InferenceClientDep, payload: dict[str, Any]) -> bytes:
    started = time.perf_counter()
    try:
        return await inference.predict_raw(payload)
    finally:
        request.app.state.metrics.inference_latency.observe(time.perf_counter() - started)


@router.post(
    "/predict/job",
    response_model=Prediction,
    responses=ERROR_RESPONSES,
    summary="Code one job description",
    description=f"Fields longer than {MAX_TEXT_CHARS} characters (`industry`: {INDUSTRY_MAX_CHARS}) are "
    "truncated and the result says so. `industry`, the employer's main activity, is optional context.",
)
async def predict_job(
    body: Annotated[JobPredictRequest, Body(openapi_examples=JOB_EXAMPLES)],
    request: Request,
    principal: ApiKeyDep,
    inference: InferenceClientDep,
) -> Response:
    ensure_encodable([body], "")
    payload = {
        "records": [body.model_dump(mode="json", include=set(RECORD_FIELDS))],
        "top_k": body.top_k,
        "thresholds": body.thresholds.model_dump() if body.thresholds else None,
        "explain": body.explain,
    }
    raw = await _infer(request, inference, payload)
    try:
        answer = json.loads(raw)
        result = answer["results"][0]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise HTTPException(502, "inference service sent an unreadable answer") from exc
    request.app.state.metrics.records.labels(endpoint="job").inc()
    request.app.state.metrics.saw_model_version(answer["model_version"])
    return Response(json.dumps(result), media_type="application/json")


@router.post(
    "/predict/batch",
    response_model=PredictResponse,
    responses={
        **ERROR_RESPONSES,
        202: {"model": JobAccepted, "description": "large batch accepted as a job (see Location)"},
    },
    summary="Code a list of job descriptions (results in the same order)",
    description="Up to `sync_batch_limit` records (default 256) are answered synchronously. "
    f"Fields longer than {MAX_TEXT_CHARS} characters (`industry`: {INDUSTRY_MAX_CHARS}) are truncated and "
    "flagged.",
)
async def predict_batch(
    body: Annotated[PredictRequest, Body(openapi_examples=BATCH_EXAMPLES)],
    request: Request,
    principal: ApiKeyDep,
    inference: InferenceClientDep,
    settings: SettingsDep,
) -> Response:
    ensure_encodable(body.records, "records")
    if len(body.records) > settings.sync_batch_limit:
        handler: LargeBatchHandler = request.app.state.large_batch_handler
        return await handler(request, body, principal)
    raw = await _infer(request, inference, body.model_dump(mode="json"))
    request.app.state.metrics.records.labels(endpoint="batch").inc(len(body.records))
    # passed through unchanged: inference already answers in PredictResponse's schema
    return Response(raw, media_type="application/json")
