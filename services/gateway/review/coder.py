"""Code one answer: a coder types a title (and optionally duties and industry) and sees, as they type, the
ranked codes with their official titles and calibrated confidence, the routing decision and the evidence
behind it (the nearest coded training titles).

    GET  /review/code     the page (templates/code.html; static/coder.js asks as the coder types)
    POST /review/code     one record as JSON -> the answer as JSON (below); X-CSRF-Token header required

The answer is the inference service's, asked the way `POST /predict/job` asks it with `explain=true` (the
model stays behind the inference service: the gateway never imports it). The page answers a signed-in coder
through the review session, not an API key, so a coder never handles a key to look one answer up. Texts go in
the request body, never in a URL (they may be personal data, and URLs are logged).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse

from services.gateway.deps import InferenceClientDep
from services.gateway.review import session as web
from services.gateway.review.pages import page, render
from services.gateway.review.session import ReviewerDep
from services.gateway.routes_predict import RECORD_FIELDS, ensure_encodable
from shared.schemas import JobRecord, Prediction
from shared.taxonomy import get_taxonomy

router = APIRouter(prefix="/review", include_in_schema=False)

TOP_K = 5  # the ranked codes shown, as on a row of the review queue
EVIDENCE_SHOWN = 6  # nearest training titles shown (the service returns up to 10)


@router.get("/code", name="review_code")
def code_page(request: Request, current: ReviewerDep) -> HTMLResponse:
    return render(request, "code.html", page(current, top_k=TOP_K))


@router.post("/code", name="review_code_answer")
async def code_answer(
    record: JobRecord, request: Request, current: ReviewerDep, inference: InferenceClientDep
) -> JSONResponse:
    """The model's answer for one record: ranked codes, routing, evidence (each example with its unit
    group's official title). 422 names the field for bad input (both texts empty, not a string ...)."""
    web.check_csrf(request, current.csrf, None)
    ensure_encodable([record], "")
    payload = {
        "records": [record.model_dump(mode="json", include=set(RECORD_FIELDS) - {"id"})],
        "top_k": TOP_K,
        "thresholds": None,
        "explain": True,
    }
    raw = await inference.predict_raw(payload)
    try:
        prediction = Prediction.model_validate(json.loads(raw)["results"][0])
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise HTTPException(502, "inference service sent an unreadable answer") from exc
    return JSONResponse(answer(prediction))


def answer(p: Prediction) -> dict[str, Any]:
    """What the page shows of a prediction: the answer and its routing, the ranked codes, the evidence."""
    taxonomy = get_taxonomy()
    return {
        "model_version": p.model_version,
        "coded": p.coded,
        "isco_code": p.isco_code,
        "level": p.level,
        "title": p.title,
        "confidence": p.confidence,
        "routing_confidence": p.routing_confidence,
        "needs_review": p.needs_review,
        "review_reasons": p.review_reasons,
        "truncated": p.truncated,
        "language": p.language,  # the language the record was coded as (ISO 639-1)
        "alternatives": [a.model_dump() for a in p.alternatives],
        "evidence": [
            {**e.model_dump(), "unit_title": taxonomy.title(e.unit_code) if e.unit_code in taxonomy else ""}
            for e in (p.evidence or [])[:EVIDENCE_SHOWN]
        ],
    }
