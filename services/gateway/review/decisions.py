"""A coder's decisions on a job's rows, and what they produce: the reviewed result and the corrections file.

    POST /review/jobs/{id}/rows/{n}           a decision: accept | alternative | search (+ code) | uncodable
                                              (+ audit_rows: the row is in an audit sample of that size)
    GET  /review/jobs/{id}/result.csv         the result CSV with final_code, coded_by and final_status
    GET  /review/jobs/{id}/corrections.csv    that job's decisions in the `isco train --corrections` format
    GET  /review/corrections.csv              all the key's decisions, same format

The decision is stored by `shared.review.decisions.record_decision` (flushed; the request commits it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import StreamingResponse
from starlette.responses import Response

from services.gateway.deps import SessionDep
from services.gateway.review import session as web
from services.gateway.review.pages import ReviewedJobDep, redirect, reviewed_job
from services.gateway.review.queue import ReviewCachesDep, audit_list, queue_list
from services.gateway.review.session import ReviewerDep
from shared.db.tables import JobStatus, ReviewAction, ReviewDecision
from shared.review.audit import AUDIT_MAX_ROWS
from shared.review.decisions import ReviewError, decisions_for_job, owner_decisions, record_decision
from shared.review.exports import corrections_csv, iter_reviewed_csv

router = APIRouter(prefix="/review", include_in_schema=False)


@router.post("/jobs/{job_id}/rows/{number}", name="review_decide")
def decide(
    job_id: str,
    number: int,
    request: Request,
    session: SessionDep,
    current: ReviewerDep,
    caches: ReviewCachesDep,
    action: Annotated[str, Form()] = "",
    code: Annotated[str, Form()] = "",
    choice: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
    audit_rows: Annotated[int | None, Form(ge=0, le=AUDIT_MAX_ROWS)] = None,
) -> Response:
    """Record a decision: `action` and `code` (set by review.js), or the `choice` "action:code" of the button
    a coder pressed without JavaScript."""
    web.check_csrf(request, current.csrf, csrf_token)
    if not action:
        action, _, code = choice.partition(":")
    job = reviewed_job(job_id, session, current)  # after the CSRF check: a forged post learns nothing
    if job.status != JobStatus.succeeded:
        raise HTTPException(409, detail={"error": "not_ready", "message": f"the job is {job.status}"})
    queue = caches.queues.get(job)
    row = queue.decidable_row(number)
    if row is None:
        raise HTTPException(
            404,
            detail={
                "error": "not_found",
                "message": f"row {number} is neither in the review queue nor audited",
            },
        )
    try:
        chosen = ReviewAction(action)
    except ValueError:
        raise HTTPException(
            422, detail={"error": "action", "message": f"unknown action {action!r}"}
        ) from None
    listing = audit_list(queue, audit_rows, None) if audit_rows is not None else queue_list(queue)
    try:
        record_decision(
            session,
            job,
            row,
            chosen,
            code,
            reviewer_key_id=current.principal.key_id,
            reviewer_name=current.principal.name,
        )
    except ReviewError as exc:
        return redirect(str(listing.url(request, job, number).include_query_params(error=str(exc))))
    following = listing.next_undecided(decisions_for_job(session, job.id), after=number)
    return redirect(str(listing.url(request, job, following)))


@router.get("/jobs/{job_id}/result.csv", name="review_result")
def reviewed_result(session: SessionDep, job: ReviewedJobDep) -> Response:
    if job.status != JobStatus.succeeded or not Path(job.result_path or "").is_file():
        raise HTTPException(
            409, detail={"error": "not_ready", "message": f"the job has no result ({job.status})"}
        )
    decisions = decisions_for_job(session, job.id)
    return StreamingResponse(
        iter_reviewed_csv(job, decisions),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="isco-{job.id}-reviewed.csv"'},
    )


def _corrections_response(decisions: list[ReviewDecision], name: str) -> Response:
    return Response(
        corrections_csv(decisions),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
    )


@router.get("/jobs/{job_id}/corrections.csv", name="review_job_corrections")
def job_corrections(session: SessionDep, current: ReviewerDep, job: ReviewedJobDep) -> Response:
    decisions = owner_decisions(session, current.principal.key_id, job.id)
    return _corrections_response(decisions, f"corrections-{job.id}.csv")


@router.get("/corrections.csv", name="review_corrections")
def all_corrections(session: SessionDep, current: ReviewerDep) -> Response:
    return _corrections_response(owner_decisions(session, current.principal.key_id), "corrections.csv")
