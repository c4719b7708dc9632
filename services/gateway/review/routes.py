"""The review page: coders sign in with an API key and settle the rows the model routed to review.

    GET  /review                              the key's jobs (progress, review counts), the model registry
    GET  /review/login, POST /review/login    sign in with an API key (signed session cookie)
    POST /review/logout
    GET  /review/jobs/{id}?row=N              one row of the job's review queue (default: the next undecided)
    POST /review/jobs/{id}/rows/{n}           a decision: accept | alternative | search (+ code) | uncodable
    GET  /review/jobs/{id}/result.csv         the result CSV with final_code and coded_by
    GET  /review/jobs/{id}/corrections.csv    that job's decisions in the `isco train --corrections` format
    GET  /review/corrections.csv              all the key's decisions, same format
    GET  /review/codes?q=                     ISCO-08 unit groups by code prefix or title words (JSON)
    POST /review/retrain                      queue a training run on the key's corrections (`training` queue)
    GET  /review/models/{version}/curve.png   a model version's coverage-precision curve

Owner-scoped like the API: another key's job answers 404, as a missing one does. Every POST needs the
session's CSRF token. Pages are server-rendered; review.js adds the keyboard and the code search.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio
import anyio.from_thread
from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session
from starlette.responses import Response

from services.gateway.auth import DEV_PRINCIPAL, authenticate
from services.gateway.deps import SessionDep, SettingsDep
from services.gateway.review import session as web
from services.gateway.review.retrain import queue_retraining
from services.gateway.settings import GatewaySettings
from shared import jobs, registry, review
from shared.db.tables import Job, JobStatus, ReviewAction, ReviewDecision
from shared.schemas import EvidenceExample
from shared.taxonomy import get_taxonomy

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
templates = Jinja2Templates(directory=str(HERE / "templates"))

router = APIRouter(prefix="/review", include_in_schema=False)

NOT_FOUND = HTTPException(404, detail={"error": "not_found", "message": "no such job"})
COUNTED_JOBS = 10  # the jobs page counts the review queues of this many newest finished jobs
CURVE_NAMES = ("coverage_precision.png", "coverage-precision.png")


# ----------------------------------------------------------------------------------------------------
# The queue of a job, cached per result file (reading a large result on every keystroke would be slow)
# ----------------------------------------------------------------------------------------------------


@dataclass
class JobQueue:
    rows: list[review.ResultRow]  # the rows in the review queue, in order
    total_rows: int
    auto_coded: int
    failed: int


class QueueCache:
    """The review queue of recently opened jobs, keyed by result file and its modification time."""

    def __init__(self, size: int = 16):
        self.size = size
        self._entries: OrderedDict[tuple[str, float], JobQueue] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, job: Job) -> JobQueue:
        path = Path(job.result_path or "")
        if not path.is_file():
            raise HTTPException(410, detail={"error": "expired", "message": "the result file is gone"})
        key = (str(path), path.stat().st_mtime)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        queue = JobQueue([], 0, 0, 0)
        for row in review.iter_result_rows(job):
            queue.total_rows += 1
            if row.in_queue:
                queue.rows.append(row)
            elif row.row_error:
                queue.failed += 1
            else:
                queue.auto_coded += 1
        with self._lock:
            self._entries[key] = queue
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return queue


def _queue_cache(request: Request) -> QueueCache:
    state = request.app.state
    if getattr(state, "review_queues", None) is None:
        state.review_queues = QueueCache()
    return state.review_queues


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------


def _signed_in(request: Request, session: Session, settings: GatewaySettings) -> web.ReviewSession:
    current = web.read_session(request, session, settings)
    if current is None:
        raise HTTPException(303, headers={"Location": str(request.url_for("review_login"))})
    return current


def _owned_job(session: Session, job_id: str, current: web.ReviewSession) -> Job:
    job = jobs.owned_job(session, job_id, current.principal.key_id)
    if job is None or job.kind not in review.REVIEWABLE_KINDS:
        raise NOT_FOUND
    return job


def _render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    # the page shows texts that may be personal data: no caching, no framing
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
        "frame-ancestors 'none'"
    )
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _curve_path(settings: GatewaySettings, version: Any) -> Path | None:
    try:
        model_dir = registry.resolve_model_dir(settings, version)
    except Exception:  # a version whose directory is gone has no curve to show
        return None
    for name in CURVE_NAMES:
        if (model_dir / name).is_file():
            return model_dir / name
    found = sorted(model_dir.glob("*coverage*precision*.png")) if model_dir.is_dir() else []
    return found[0] if found else None


EVIDENCE_TIMEOUT_S = 3.0
EVIDENCE_BACKOFF_S = 30.0  # after a failed call, pages are served without evidence for this long
EVIDENCE_PER_CODE = 3


def _evidence(request: Request, row: review.ResultRow) -> dict[str, list[EvidenceExample]]:
    """The nearest training examples behind each of the row's alternatives, from the inference service
    (explain=true); empty when the model has none or the service does not answer in time."""
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


# ----------------------------------------------------------------------------------------------------
# Sign in and out
# ----------------------------------------------------------------------------------------------------


@router.get("/login", name="review_login")
def login_page(request: Request, settings: SettingsDep) -> HTMLResponse:
    token = web.login_token(request, settings)
    page = _render(
        request, "login.html", {"csrf": token, "error": None, "auth_disabled": settings.auth_disabled}
    )
    web.set_login_cookie(request, page, settings, token)
    return page


@router.post("/login")
def login(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    api_key: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    web.check_login_csrf(request, settings, csrf_token)
    principal = (
        DEV_PRINCIPAL
        if settings.auth_disabled
        else authenticate(session, api_key.strip(), settings.secret_key)
    )
    if principal is None:
        log.info("review sign-in refused")
        return _render(
            request,
            "login.html",
            {
                "csrf": csrf_token,
                "error": "That API key is not valid (or was revoked).",
                "auth_disabled": False,
            },
            status_code=401,
        )
    response = _redirect(str(request.url_for("review_home")))
    web.start_session(request, response, settings, principal)
    log.info("review sign-in", extra={"key_id": principal.key_id})
    return response


@router.post("/logout")
def logout(
    request: Request, session: SessionDep, settings: SettingsDep, csrf_token: Annotated[str, Form()] = ""
) -> Response:
    current = _signed_in(request, session, settings)
    web.check_csrf(request, current.csrf, csrf_token)
    response = _redirect(str(request.url_for("review_login")))
    web.end_session(response)
    return response


# ----------------------------------------------------------------------------------------------------
# Jobs and registry
# ----------------------------------------------------------------------------------------------------


@router.get("", name="review_home")
def home(request: Request, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    current = _signed_in(request, session, settings)
    cache = _queue_cache(request)
    listed = []
    counted = 0
    for job in jobs.list_jobs(session, current.principal.key_id, limit=100):
        entry: dict[str, Any] = {"job": job, "queue": None, "decided": 0}
        if job.kind in review.REVIEWABLE_KINDS and job.status == JobStatus.succeeded:
            if counted >= COUNTED_JOBS:  # counting reads the result file: only the newest jobs
                entry["uncounted"] = True
            else:
                counted += 1
                try:
                    entry["queue"] = cache.get(job)
                    entry["decided"] = review.count_decisions(session, job.id)
                except HTTPException:
                    entry["expired"] = True
        listed.append(entry)
    versions = registry.list_versions(session, limit=20)
    best = registry.best_model(session)
    models = [
        {
            "mv": mv,
            "curve": _curve_path(settings, mv) is not None,
            "is_best": best is not None and mv.id == best.id,
        }
        for mv in versions
    ]
    all_decisions = review.owner_decisions(session, current.principal.key_id)
    return _render(
        request,
        "index.html",
        {
            "principal": current.principal,
            "csrf": current.csrf,
            "jobs": listed,
            "active": any(e["job"].status in jobs.ACTIVE for e in listed),
            "models": models,
            "best": best,
            "corrections": sum(1 for d in all_decisions if d.final_code),
            "message": request.query_params.get("message"),
        },
    )


@router.get("/models/{version}/curve.png", name="review_curve")
def curve(version: str, request: Request, session: SessionDep, settings: SettingsDep) -> FileResponse:
    _signed_in(request, session, settings)
    mv = registry.get_version(session, version)
    path = _curve_path(settings, mv) if mv is not None else None
    if path is None:
        raise HTTPException(404, detail={"error": "not_found", "message": "no curve for this version"})
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


@router.post("/retrain", name="review_retrain")
def retrain(
    request: Request, session: SessionDep, settings: SettingsDep, csrf_token: Annotated[str, Form()] = ""
) -> Response:
    """Write the key's decisions as a corrections file on the shared volume and queue a training run."""
    current = _signed_in(request, session, settings)
    web.check_csrf(request, current.csrf, csrf_token)
    from services.gateway.jobs import job_settings

    try:
        key_id = current.principal.key_id
        decisions = review.owner_decisions(session, key_id)
        label = f"key-{key_id if key_id is not None else 'dev'}"
        job_id = queue_retraining(job_settings(request), decisions, key_id, label=label)
    except review.ReviewError as exc:
        return _redirect(str(request.url_for("review_home").include_query_params(message=str(exc))))
    except Exception as exc:  # the broker is down: say so on the page
        log.error("could not queue retraining: %s", exc)
        message = "The training queue is unavailable; try again later."
        return _redirect(str(request.url_for("review_home").include_query_params(message=message)))
    message = f"Training job {job_id} queued on the training queue with your corrections."
    return _redirect(str(request.url_for("review_home").include_query_params(message=message)))


# ----------------------------------------------------------------------------------------------------
# The review queue of a job
# ----------------------------------------------------------------------------------------------------


def _next_undecided(queue: JobQueue, decisions: dict[int, ReviewDecision], after: int = 0) -> int | None:
    numbers = [r.number for r in queue.rows if r.number not in decisions]
    later = [n for n in numbers if n > after]
    candidates = later or numbers
    return candidates[0] if candidates else None


@router.get("/jobs/{job_id}", name="review_job")
def job_page(
    job_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    row: Annotated[int | None, Query(ge=1)] = None,
) -> HTMLResponse:
    current = _signed_in(request, session, settings)
    job = _owned_job(session, job_id, current)
    context: dict[str, Any] = {"principal": current.principal, "csrf": current.csrf, "job": job}
    if job.status != JobStatus.succeeded:
        return _render(request, "job.html", {**context, "queue": None, "row": None})
    queue = _queue_cache(request).get(job)
    decisions = review.decisions_for_job(session, job.id)
    number = row if row is not None else _next_undecided(queue, decisions)
    current_row = next((r for r in queue.rows if r.number == number), None)
    if row is not None and current_row is None:
        raise HTTPException(
            404, detail={"error": "not_found", "message": f"row {row} is not in the review queue"}
        )
    position = queue.rows.index(current_row) if current_row is not None else None
    taxonomy = get_taxonomy()
    return _render(
        request,
        "job.html",
        {
            **context,
            "queue": queue,
            "row": current_row,
            "position": position,
            "decisions": decisions,
            "decision": decisions.get(current_row.number) if current_row else None,
            "decided": sum(1 for r in queue.rows if r.number in decisions),
            "prev_row": queue.rows[position - 1].number if position else None,
            "next_row": queue.rows[position + 1].number
            if position is not None and position + 1 < len(queue.rows)
            else None,
            "evidence": _evidence(request, current_row) if current_row else {},
            "title_of": lambda code: taxonomy.title(code) if code and code in taxonomy else "",
            "error": request.query_params.get("error"),
            "recent": sorted(decisions.values(), key=lambda d: d.decided_at, reverse=True)[:5],
        },
    )


@router.post("/jobs/{job_id}/rows/{number}", name="review_decide")
def decide(
    job_id: str,
    number: int,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    action: Annotated[str, Form()],
    code: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    current = _signed_in(request, session, settings)
    web.check_csrf(request, current.csrf, csrf_token)
    job = _owned_job(session, job_id, current)
    if job.status != JobStatus.succeeded:
        raise HTTPException(409, detail={"error": "not_ready", "message": f"the job is {job.status}"})
    queue = _queue_cache(request).get(job)
    row = next((r for r in queue.rows if r.number == number), None)
    if row is None:
        raise HTTPException(
            404, detail={"error": "not_found", "message": f"row {number} is not in the review queue"}
        )
    try:
        chosen = ReviewAction(action)
    except ValueError:
        raise HTTPException(
            422, detail={"error": "action", "message": f"unknown action {action!r}"}
        ) from None
    page = request.url_for("review_job", job_id=job.id)
    try:
        review.record_decision(
            session,
            job,
            row,
            chosen,
            code,
            reviewer_key_id=current.principal.key_id,
            reviewer_name=current.principal.name,
        )
    except review.ReviewError as exc:
        return _redirect(str(page.include_query_params(row=number, error=str(exc))))
    session.commit()
    following = _next_undecided(queue, review.decisions_for_job(session, job.id), after=number)
    return _redirect(str(page.include_query_params(row=following)) if following else str(page))


@router.get("/jobs/{job_id}/result.csv", name="review_result")
def reviewed_result(job_id: str, request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    current = _signed_in(request, session, settings)
    job = _owned_job(session, job_id, current)
    if job.status != JobStatus.succeeded or not Path(job.result_path or "").is_file():
        raise HTTPException(
            409, detail={"error": "not_ready", "message": f"the job has no result ({job.status})"}
        )
    decisions = review.decisions_for_job(session, job.id)
    return StreamingResponse(
        review.iter_reviewed_csv(job, decisions),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="isco-{job.id}-reviewed.csv"'},
    )


def _corrections_response(decisions: list[ReviewDecision], name: str) -> Response:
    return Response(
        review.corrections_csv(decisions),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
    )


@router.get("/jobs/{job_id}/corrections.csv", name="review_job_corrections")
def job_corrections(job_id: str, request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    current = _signed_in(request, session, settings)
    job = _owned_job(session, job_id, current)
    decisions = review.owner_decisions(session, current.principal.key_id, job.id)
    return _corrections_response(decisions, f"corrections-{job.id}.csv")


@router.get("/corrections.csv", name="review_corrections")
def all_corrections(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    current = _signed_in(request, session, settings)
    return _corrections_response(review.owner_decisions(session, current.principal.key_id), "corrections.csv")


@router.get("/codes", name="review_codes")
def codes(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    q: Annotated[str, Query(max_length=200)] = "",
) -> JSONResponse:
    _signed_in(request, session, settings)
    return JSONResponse([{"code": c, "title": t} for c, t in review.search_codes(q)])


@router.get("/static/{name}", name="review_static")
def static(name: str) -> FileResponse:
    path = STATIC_DIR / name
    if "/" in name or path.suffix not in STATIC_TYPES or not path.is_file():
        raise HTTPException(404, detail={"error": "not_found", "message": "no such file"})
    return FileResponse(path, media_type=STATIC_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})
