"""The review page's home: the key's jobs and the model registry, and the retraining the decisions feed.

GET  /review?page=N                       the key's jobs (25 a page: name, submit time, progress, review
                                          and audit counts, downloads), the upload card (upload.py), the
                                          model registry
GET  /review/models/{version}/curve.png   a model version's coverage-precision curve
POST /review/retrain                      queue a training run on the key's corrections (`training` queue)
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse
from starlette.responses import Response

from services.gateway.deps import SessionDep, SettingsDep
from services.gateway.jobs import job_settings
from services.gateway.review import session as web
from services.gateway.review.descriptions import curve_path, job_name, model_measures
from services.gateway.review.pages import page, redirect, render
from services.gateway.review.queue import ReviewCachesDep
from services.gateway.review.retrain import queue_retraining
from services.gateway.review.session import ReviewerDep
from services.gateway.review.upload import upload_limits
from shared import registry
from shared.db.tables import JobStatus
from shared.jobs.state import ACTIVE, owner_jobs
from shared.review.audit import audit_counts
from shared.review.decisions import ReviewError, decisions_by_job, owner_decisions
from shared.review.results import REVIEWABLE_KINDS

log = logging.getLogger(__name__)

router = APIRouter(prefix="/review", include_in_schema=False)

JOBS_PER_PAGE = 25
MODELS_SHOWN = 20


@router.get("", name="review_home")
def home(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    current: ReviewerDep,
    caches: ReviewCachesDep,
    page_number: Annotated[int, Query(alias="page", ge=1, le=1_000_000)] = 1,
) -> HTMLResponse:
    shown, total = owner_jobs(
        session, current.principal.key_id, (page_number - 1) * JOBS_PER_PAGE, JOBS_PER_PAGE
    )
    reviewable = [j for j in shown if j.kind in REVIEWABLE_KINDS and j.status == JobStatus.succeeded]
    decisions = decisions_by_job(session, [j.id for j in reviewable])
    listed = []
    for job in shown:
        entry: dict[str, Any] = {"job": job, "name": job_name(job), "counts": None}
        if job in reviewable:
            try:
                counts = caches.job_counts(job)
            except HTTPException:
                entry["expired"] = True
            else:
                entry["counts"] = counts
                entry["decided"] = sum(1 for d in decisions[job.id] if counts.in_queue(d.row_number))
                entry["audit"] = audit_counts(decisions[job.id], counts)
        listed.append(entry)
    versions = registry.list_versions(session, limit=MODELS_SHOWN)
    best = registry.best_model(session)
    models = [
        {
            "mv": mv,
            "measures": model_measures(mv),
            "curve": curve_path(settings, mv) is not None,
            "is_best": best is not None and mv.id == best.id,
        }
        for mv in versions
    ]
    all_decisions = owner_decisions(session, current.principal.key_id)
    pages = max(1, -(-total // JOBS_PER_PAGE))
    home_url = request.url_for("review_home")
    return render(
        request,
        "index.html",
        page(
            current,
            jobs=listed,
            total_jobs=total,
            first=(page_number - 1) * JOBS_PER_PAGE + 1,
            page=page_number,
            pages=pages,
            newer=str(home_url.include_query_params(page=page_number - 1)) if page_number > 1 else None,
            older=str(home_url.include_query_params(page=page_number + 1)) if page_number < pages else None,
            active=any(e["job"].status in ACTIVE for e in listed),
            models=models,
            best=best,
            corrections=sum(1 for d in all_decisions if d.final_code),
            message=request.query_params.get("message"),
            upload_limits=upload_limits(job_settings(request)),
        ),
    )


@router.get("/models/{version}/curve.png", name="review_curve")
def curve(version: str, session: SessionDep, settings: SettingsDep, current: ReviewerDep) -> FileResponse:
    mv = registry.get_version(session, version)
    path = curve_path(settings, mv) if mv is not None else None
    if path is None:
        raise HTTPException(404, detail={"error": "not_found", "message": "no curve for this version"})
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


@router.post("/retrain", name="review_retrain")
def retrain(
    request: Request, session: SessionDep, current: ReviewerDep, csrf_token: Annotated[str, Form()] = ""
) -> Response:
    """Write the key's decisions as a corrections file on the shared volume and queue a training run."""
    web.check_csrf(request, current.csrf, csrf_token)
    home_url = request.url_for("review_home")
    try:
        key_id = current.principal.key_id
        decisions = owner_decisions(session, key_id)
        label = f"key-{key_id if key_id is not None else 'dev'}"
        job_id = queue_retraining(job_settings(request), decisions, key_id, label=label)
    except ReviewError as exc:
        return redirect(str(home_url.include_query_params(message=str(exc))))
    except Exception as exc:  # the broker is down: say so on the page
        log.error("could not queue retraining: %s", exc)
        message = "The training queue is unavailable; try again later."
        return redirect(str(home_url.include_query_params(message=message)))
    message = f"Training job {job_id} queued on the training queue with your corrections."
    return redirect(str(home_url.include_query_params(message=message)))
