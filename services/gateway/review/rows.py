"""The row view: one row of a job's review queue or audit sample, with the model's alternatives, the evidence
behind them and the code search, for the coder to decide (the decision itself: review/decisions.py).

    GET  /review/jobs/{id}?row=N              one row of the job's review queue (default: the next undecided)
    GET  /review/jobs/{id}/audit?rows=K|share=P&row=N
                                              one row of the audit sample: K (or P% of the) auto-coded rows,
                                              a seeded random sample (`shared.review.audit.audit_key`)
    GET  /review/codes?q=                     unit groups by code prefix or by the titles the model knows
                                              (ESCO labels, ONS coding index, ISCO-08 titles), ranked (JSON)
"""

from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy.orm import Session

from services.gateway.deps import SessionDep
from services.gateway.review import search
from services.gateway.review.descriptions import job_name
from services.gateway.review.evidence import row_evidence
from services.gateway.review.glance import job_glance
from services.gateway.review.pages import ReviewedJobDep, page, render
from services.gateway.review.queue import (
    AUDIT,
    QUEUE,
    JobQueue,
    ReviewCachesDep,
    RowList,
    audit_list,
    queue_list,
)
from services.gateway.review.session import ReviewerDep, ReviewSession
from shared.db.tables import Job, JobStatus
from shared.review.audit import AUDIT_MAX_ROWS, AUDIT_MIN_ROWS, AUDIT_SHARE, audit_counts, audit_size
from shared.review.decisions import decisions_for_job
from shared.taxonomy import get_taxonomy

router = APIRouter(prefix="/review", include_in_schema=False)

RECENT_DECISIONS = 5  # shown under the row


def _row_view(
    request: Request,
    session: Session,
    current: ReviewSession,
    job: Job,
    listing: RowList | None,
    queue: JobQueue | None,
    row: int | None,
) -> HTMLResponse:
    context = page(current, job=job, job_name=job_name(job), mode=listing.mode if listing else QUEUE)
    if listing is None or queue is None:
        return render(request, "job.html", {**context, "queue": None, "row": None})
    decisions = decisions_for_job(session, job.id)
    number = row if row is not None else listing.next_undecided(decisions)
    current_row = next((r for r in listing.rows if r.number == number), None)
    if row is not None and current_row is None:
        where = "in the audit sample" if listing.mode == AUDIT else "in the review queue"
        raise HTTPException(404, detail={"error": "not_found", "message": f"row {row} is not {where}"})
    position = listing.rows.index(current_row) if current_row is not None else None
    taxonomy = get_taxonomy()
    if current_row is not None:
        search.warm_up()
    in_list = {r.number for r in listing.rows}
    return render(
        request,
        "job.html",
        {
            **context,
            "queue": queue,
            "listing": listing,
            "row": current_row,
            "position": position,
            "decision": decisions.get(current_row.number) if current_row else None,
            "decided": sum(1 for n in in_list if n in decisions),
            "queue_decided": sum(1 for r in queue.rows if r.number in decisions),
            "audit": audit_counts(decisions.values(), queue.counts),
            "default_audit": audit_size(queue.auto_coded),
            "audit_share": round(100 * AUDIT_SHARE),
            "audit_min": AUDIT_MIN_ROWS,
            "audit_max": min(AUDIT_MAX_ROWS, queue.auto_coded),
            "queue_url": request.url_for("review_job", job_id=job.id),
            "audit_url": request.url_for("review_audit", job_id=job.id),
            "row_url": lambda n: listing.url(request, job, n),
            "prev_row": listing.rows[position - 1].number if position else None,
            "next_row": listing.rows[position + 1].number
            if position is not None and position + 1 < len(listing.rows)
            else None,
            "evidence": row_evidence(request, current_row) if current_row else {},
            "glance": job_glance(job, decisions),
            "title_of": lambda code: taxonomy.title(code) if code and code in taxonomy else "",
            "error": request.query_params.get("error"),
            "recent": sorted(
                (d for d in decisions.values() if d.row_number in in_list),
                key=lambda d: d.decided_at,
                reverse=True,
            )[:RECENT_DECISIONS],
        },
    )


@router.get("/jobs/{job_id}", name="review_job")
def job_page(
    request: Request,
    session: SessionDep,
    current: ReviewerDep,
    job: ReviewedJobDep,
    caches: ReviewCachesDep,
    row: Annotated[int | None, Query(ge=1)] = None,
) -> HTMLResponse:
    if job.status != JobStatus.succeeded:
        return _row_view(request, session, current, job, None, None, None)
    queue = caches.queues.get(job)
    return _row_view(request, session, current, job, queue_list(queue), queue, row)


@router.get("/jobs/{job_id}/audit", name="review_audit")
def audit_page(
    request: Request,
    session: SessionDep,
    current: ReviewerDep,
    job: ReviewedJobDep,
    caches: ReviewCachesDep,
    row: Annotated[int | None, Query(ge=1)] = None,
    rows: Annotated[str, Query(max_length=12)] = "",
    share: Annotated[str, Query(max_length=12)] = "",
) -> HTMLResponse:
    """The audit of auto-coded rows: a seeded random sample of `rows` of them, or `share` percent (default:
    `AUDIT_SHARE`, at least `AUDIT_MIN_ROWS`), decided like the queue's rows. The page's form sends both
    fields, the one left empty as "" (so they are read here, not by FastAPI's number parsing)."""
    size = _number(rows, int, "rows", 0, AUDIT_MAX_ROWS)
    percent = _number(share, float, "share", 0, 100)
    if percent == 0:
        raise HTTPException(422, detail={"error": "share", "message": "share must be above 0 (percent)"})
    if job.status != JobStatus.succeeded:
        return _row_view(request, session, current, job, None, None, None)
    queue = caches.queues.get(job)
    return _row_view(request, session, current, job, audit_list(queue, size, percent), queue, row)


N = TypeVar("N", int, float)


def _number(text: str, kind: type[N], name: str, low: N, high: N) -> N | None:
    """An optional number from a query parameter ("" or absent: None); 422 outside [low, high]."""
    if not text.strip():
        return None
    refused = HTTPException(
        422, detail={"error": name, "message": f"{name} must be a number from {low} to {high}"}
    )
    try:
        value = kind(text.strip())
    except ValueError:
        raise refused from None
    if not low <= value <= high:  # NaN compares false: refused too
        raise refused
    return value


@router.get("/codes", name="review_codes")
def codes(current: ReviewerDep, q: Annotated[str, Query(max_length=200)] = "") -> JSONResponse:
    """Unit groups for the code search: each with its official title and the title that matched."""
    hits = search.code_index().search(q)
    return JSONResponse(
        [
            {
                "code": h.code,
                "title": h.title,
                "matched": h.matched,
                "source": h.source,
                "industry": h.industry,
                "matches": h.matches,
            }
            for h in hits
        ]
    )
