"""The evidence beside a row: the nearest training examples behind each of its alternatives, asked of the
inference service (`explain=true`). Evidence decorates the page; the coder can work without it, so a slow or
failed call shows the page without evidence and, for a while, stops asking.
"""

from __future__ import annotations

import json
import logging
import time

import anyio
import anyio.from_thread
from starlette.requests import Request

from shared.review.results import ResultRow
from shared.schemas import EvidenceExample

log = logging.getLogger(__name__)

EVIDENCE_TIMEOUT_S = 3.0
EVIDENCE_BACKOFF_S = 30.0  # after a failed call, pages are served without evidence for this long
EVIDENCE_PER_CODE = 3


def row_evidence(request: Request, row: ResultRow) -> dict[str, list[EvidenceExample]]:
    """Examples by unit group (at most `EVIDENCE_PER_CODE` each), for the codes among the row's candidates;
    empty when the model has none or the service does not answer in time. Called from a route in the thread
    pool: the call runs on the event loop."""
    state = request.app.state
    if time.monotonic() < getattr(state, "review_evidence_down_until", 0.0):
        return {}
    payload = {
        "records": [
            {
                "job_title": row.job_title,
                "duties_description": row.duties_description,
                "industry": row.industry,
            }
        ],
        "top_k": 5,
        "explain": True,
    }

    async def call() -> bytes | None:
        with anyio.move_on_after(EVIDENCE_TIMEOUT_S):
            return await state.inference.predict_raw(payload)
        return None

    try:
        raw = anyio.from_thread.run(call)
        if raw is None:
            raise TimeoutError("no answer in time")
        examples = json.loads(raw)["results"][0].get("evidence") or []
    except Exception as exc:  # evidence decorates the page; the coder can work without it
        log.info("no evidence for the review page: %s", exc)
        state.review_evidence_down_until = time.monotonic() + EVIDENCE_BACKOFF_S
        return {}
    codes = {c.code for c in row.candidates}
    grouped: dict[str, list[EvidenceExample]] = {}
    for item in examples:
        example = EvidenceExample.model_validate(item)
        if example.unit_code in codes and len(grouped.setdefault(example.unit_code, [])) < EVIDENCE_PER_CODE:
            grouped[example.unit_code].append(example)
    return {code: found for code, found in grouped.items() if found}
