"""The review page: coders sign in with an API key and settle the rows the model routed to review.

    GET  /review?page=N                       the key's jobs (25 a page: name, submit time, progress, review
                                              and audit counts), the model registry
    GET  /review/login, POST /review/login    sign in with an API key (signed session cookie)
    POST /review/logout
    GET  /review/jobs/{id}?row=N              one row of the job's review queue (default: the next undecided)
    GET  /review/jobs/{id}/audit?rows=K|share=P&row=N
                                              one row of the audit sample: K (or P% of the) auto-coded rows,
                                              a seeded random sample (shared/review/audit.py `audit_key`)
    POST /review/jobs/{id}/rows/{n}           a decision: accept | alternative | search (+ code) | uncodable
                                              (+ audit_rows: the row is in an audit sample of that size)
    GET  /review/jobs/{id}/result.csv         the result CSV with final_code, coded_by and final_status
    GET  /review/jobs/{id}/corrections.csv    that job's decisions in the `isco train --corrections` format
    GET  /review/corrections.csv              all the key's decisions, same format
    GET  /review/codes?q=                     unit groups by code prefix or by the titles the model knows
                                              (ESCO labels, ONS coding index, ISCO-08 titles), ranked (JSON)
    POST /review/retrain                      queue a training run on the key's corrections (`training` queue)
    GET  /review/models/{version}/curve.png   a model version's coverage-precision curve
    GET  /review/static/{name}                review.js, review.css, favicon.svg

Owner-scoped like the API: another key's job answers 404, as a missing one does. Every POST needs the
session's CSRF token. Pages are server-rendered; review.js adds the keyboard and the code search.
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

import anyio
import anyio.from_thread
from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session
from starlette.datastructures import URL
from starlette.responses import Response

from services.gateway.auth import DEV_PRINCIPAL, authenticate
from services.gateway.deps import SessionDep, SettingsDep
from services.gateway.review import search
from services.gateway.review import session as web
from services.gateway.review.retrain import queue_retraining
from services.gateway.settings import GatewaySettings
from shared import registry
from shared.db.tables import Job, JobStatus, ModelVersion, ReviewAction, ReviewDecision
from shared.jobs.state import ACTIVE, TRAINING, owned_job, owner_jobs
from shared.review.audit import (
    AUDIT_MAX_ROWS,
    AUDIT_MIN_ROWS,
    AUDIT_SHARE,
    audit_counts,
    audit_key,
    audit_size,
)
from shared.review.decisions import (
    ReviewError,
    decisions_by_job,
    decisions_for_job,
    owner_decisions,
    record_decision,
)
from shared.review.exports import corrections_csv, iter_reviewed_csv
from shared.review.results import REVIEWABLE_KINDS, ResultCounts, ResultRow, count_result, iter_result_rows
from shared.schemas import EvidenceExample
from shared.taxonomy import get_taxonomy

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
STATIC_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
templates = Jinja2Templates(directory=str(HERE / "templates"))

router = APIRouter(prefix="/review", include_in_schema=False)

NOT_FOUND = HTTPException(404, detail={"error": "not_found", "message": "no such job"})
JOBS_PER_PAGE = 25
CURVE_NAMES = ("coverage_precision.png", "coverage-precision.png")
QUEUE = "queue"
AUDIT = "audit"


# ----------------------------------------------------------------------------------------------------
# A job's rows, cached per result file (reading a large result on every keystroke would be slow)
# ----------------------------------------------------------------------------------------------------


@dataclass
class JobQueue:
    """What the row pages need of a finished job: the review queue, the audit pool and the counts."""

    rows: list[ResultRow]  # the rows in the review queue, in order
    counts: ResultCounts
    # auto-coded rows in audit order (`audit_key`), the first `AUDIT_MAX_ROWS` of them
    audit_pool: list[ResultRow] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        return self.counts.total_rows

    @property
    def auto_coded(self) -> int:
        return self.counts.auto_coded

    @property
    def failed(self) -> int:
        return self.counts.failed

    def audit_sample(self, size: int) -> list[ResultRow]:
        """The audit sample of `size` rows, in row order."""
        return sorted(self.audit_pool[:size], key=lambda r: r.number)


def read_queue(job: Job) -> JobQueue:
    """One pass over the result: the queue rows, the counts, and the auto-coded rows with the smallest audit
    keys (a bounded heap, so a large job's auto-coded rows are not all kept)."""
    rows: list[ResultRow] = []
    pool: list[tuple[int, int, ResultRow]] = []  # (-key, -number, row): a max-heap on the key
    total = failed = auto = 0
    queue_numbers = array("L")
    for row in iter_result_rows(job):
        total += 1
        if row.in_queue:
            rows.append(row)
            queue_numbers.append(row.number)
        elif row.row_error:
            failed += 1
        else:
            auto += 1
            item = (-audit_key(job.id, row.number), -row.number, row)
            if len(pool) < AUDIT_MAX_ROWS:
                heapq.heappush(pool, item)
            elif item > pool[0]:
                heapq.heapreplace(pool, item)
    counts = ResultCounts(total, auto, failed, queue_numbers)
    ordered = [row for _key, _number, row in sorted(pool, reverse=True)]
    return JobQueue(rows, counts, ordered)


T = TypeVar("T")


class ResultCache(Generic[T]):
    """Something read from a job's result file, kept for recently used jobs, keyed by the result file and its
    modification time (a rewritten result is read again)."""

    def __init__(self, read: Callable[[Job], T], size: int):
        self.read, self.size = read, size
        self._entries: OrderedDict[tuple[str, float], T] = OrderedDict()
        self._lock = threading.Lock()

    def key(self, job: Job) -> tuple[str, float]:
        path = Path(job.result_path or "")
        if not path.is_file():
            raise HTTPException(410, detail={"error": "expired", "message": "the result file is gone"})
        return str(path), path.stat().st_mtime

    def peek(self, job: Job) -> T | None:
        with self._lock:
            return self._entries.get(self.key(job))

    def get(self, job: Job) -> T:
        key = self.key(job)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        try:
            value = self.read(job)
        except FileNotFoundError:
            raise HTTPException(
                410, detail={"error": "expired", "message": "the result file is gone"}
            ) from None
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value


def _queue_cache(request: Request) -> ResultCache[JobQueue]:
    state = request.app.state
    if getattr(state, "review_queues", None) is None:
        state.review_queues = ResultCache(read_queue, size=16)
    cache: ResultCache[JobQueue] = state.review_queues
    return cache


def _counts_cache(request: Request) -> ResultCache[ResultCounts]:
    state = request.app.state
    if getattr(state, "review_counts", None) is None:
        state.review_counts = ResultCache(count_result, size=512)
    cache: ResultCache[ResultCounts] = state.review_counts
    return cache


def _counts(request: Request, job: Job) -> ResultCounts:
    """A job's counts, from an open queue when there is one (no second read of the file)."""
    opened = _queue_cache(request).peek(job)
    return opened.counts if opened is not None else _counts_cache(request).get(job)


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------


def _signed_in(request: Request, session: Session, settings: GatewaySettings) -> web.ReviewSession:
    current = web.read_session(request, session, settings)
    if current is None:
        raise HTTPException(303, headers={"Location": str(request.url_for("review_login"))})
    return current


def _owned_job(session: Session, job_id: str, current: web.ReviewSession) -> Job:
    job = owned_job(session, job_id, current.principal.key_id)
    if job is None or job.kind not in REVIEWABLE_KINDS:
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


def _page(current: web.ReviewSession, **context: Any) -> dict[str, Any]:
    """What every signed-in page shows: the key in the header, the session's CSRF token."""
    return {"principal": current.principal, "key_label": current.label, "key_prefix": current.prefix,
            "csrf": current.csrf, **context}  # fmt: skip


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _when(moment: Any) -> str:
    """A stored time (UTC) for the page."""
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else ""


templates.env.filters["when"] = _when


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


def _evidence(request: Request, row: ResultRow) -> dict[str, list[EvidenceExample]]:
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
# How jobs and models read to a coder
# ----------------------------------------------------------------------------------------------------

NAME_TITLES = 2  # a batch job's name quotes its first titles
NAME_TITLE_CHARS = 32


@lru_cache(maxsize=2048)
def _first_titles(input_path: str) -> tuple[str, ...]:
    """The first job titles of a batch job's input records (the input never changes once written)."""
    titles: list[str] = []
    try:
        with open(input_path, encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                text = str(record.get("job_title") or record.get("duties_description") or "").strip()
                if text:
                    titles.append(
                        text if len(text) <= NAME_TITLE_CHARS else text[: NAME_TITLE_CHARS - 1] + "…"
                    )
                if len(titles) == NAME_TITLES:
                    break
    except (OSError, ValueError):  # gone (expired) or unreadable: the name says less
        return ()
    return tuple(titles)


def job_name(job: Job) -> str:
    """A name a coder recognises a job by: the uploaded file's, a batch's first titles, a training run's
    purpose."""
    options = job.options or {}
    rows = job.rows_total or 0
    if job.kind == "csv":
        return str(options.get("filename") or f"CSV upload of {rows:,} rows")
    if job.kind == "batch":
        head = f"Batch of {rows:,} record{'' if rows == 1 else 's'}"
        titles = () if options.get("expired") else _first_titles(job.input_path)
        if not titles:
            return head
        return f"{head}: " + ", ".join(titles) + (", …" if rows > len(titles) else "")
    if job.kind == TRAINING:
        corrections = options.get("correction_rows")
        if corrections:
            return f"Retraining on {corrections:,} correction{'' if corrections == 1 else 's'}"
        return "Training run"
    return job.kind


_DATASET_WORDS = {"ilo": "ILO", "onet": "O*NET", "ons": "ONS", "esco": "ESCO", "isco": "ISCO"}


def dataset_name(name: str) -> str:
    """A dev set's file stem as words: `ilo_titles_dev` -> "ILO titles"."""
    words = name.removesuffix("_dev").replace("-", "_").split("_")
    return " ".join(_DATASET_WORDS.get(w.lower(), w) for w in words if w) or name


def _share(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Measure:
    """One figure of a model for coders: on which records, how often right, how much it codes alone."""

    on: str
    accuracy: float | None
    auto_coded: float | None = None
    auto_precision: float | None = None


def model_measures(mv: ModelVersion) -> list[Measure]:
    """A model's figures as a coder reads them: accuracy and the auto-coded share (and how often those auto
    codes are right) on each development set, else on the held-out test records."""
    metrics = mv.metrics if isinstance(mv.metrics, dict) else {}
    measured: list[tuple[str, Any]] = []
    devsets = metrics.get("devsets")
    if isinstance(devsets, dict):
        measured = [(dataset_name(str(name)), m) for name, m in sorted(devsets.items())]
    if not measured and isinstance(metrics.get("test"), dict):
        measured = [("held-out test records", metrics["test"])]
    out = []
    for on, m in measured:
        if not isinstance(m, dict):
            continue
        routing = m.get("routing")
        if not isinstance(routing, dict):
            routing = {}
        out.append(
            Measure(
                on,
                _share(m.get("accuracy")),
                _share(routing.get("auto_coded")),
                _share(routing.get("auto_coded_precision")),
            )
        )
    if not out and mv.eval_score is not None:
        out.append(Measure("held-out test records", mv.eval_score))
    return out


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
def home(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> HTMLResponse:
    current = _signed_in(request, session, settings)
    shown, total = owner_jobs(session, current.principal.key_id, (page - 1) * JOBS_PER_PAGE, JOBS_PER_PAGE)
    reviewable = [j for j in shown if j.kind in REVIEWABLE_KINDS and j.status == JobStatus.succeeded]
    decisions = decisions_by_job(session, [j.id for j in reviewable])
    listed = []
    for job in shown:
        entry: dict[str, Any] = {"job": job, "name": job_name(job), "counts": None}
        if job in reviewable:
            try:
                counts = _counts(request, job)
            except HTTPException:
                entry["expired"] = True
            else:
                entry["counts"] = counts
                entry["decided"] = sum(1 for d in decisions[job.id] if counts.in_queue(d.row_number))
                entry["audit"] = audit_counts(decisions[job.id], counts)
        listed.append(entry)
    versions = registry.list_versions(session, limit=20)
    best = registry.best_model(session)
    models = [
        {
            "mv": mv,
            "measures": model_measures(mv),
            "curve": _curve_path(settings, mv) is not None,
            "is_best": best is not None and mv.id == best.id,
        }
        for mv in versions
    ]
    all_decisions = owner_decisions(session, current.principal.key_id)
    pages = max(1, -(-total // JOBS_PER_PAGE))
    home_url = request.url_for("review_home")
    return _render(
        request,
        "index.html",
        _page(
            current,
            jobs=listed,
            total_jobs=total,
            first=(page - 1) * JOBS_PER_PAGE + 1,
            page=page,
            pages=pages,
            newer=str(home_url.include_query_params(page=page - 1)) if page > 1 else None,
            older=str(home_url.include_query_params(page=page + 1)) if page < pages else None,
            active=any(e["job"].status in ACTIVE for e in listed),
            models=models,
            best=best,
            corrections=sum(1 for d in all_decisions if d.final_code),
            message=request.query_params.get("message"),
        ),
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
        decisions = owner_decisions(session, key_id)
        label = f"key-{key_id if key_id is not None else 'dev'}"
        job_id = queue_retraining(job_settings(request), decisions, key_id, label=label)
    except ReviewError as exc:
        return _redirect(str(request.url_for("review_home").include_query_params(message=str(exc))))
    except Exception as exc:  # the broker is down: say so on the page
        log.error("could not queue retraining: %s", exc)
        message = "The training queue is unavailable; try again later."
        return _redirect(str(request.url_for("review_home").include_query_params(message=message)))
    message = f"Training job {job_id} queued on the training queue with your corrections."
    return _redirect(str(request.url_for("review_home").include_query_params(message=message)))


# ----------------------------------------------------------------------------------------------------
# A job's rows: the review queue, and the audit sample of its auto-coded rows
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowList:
    """The rows one view walks through: the review queue, or an audit sample of `audit_rows` rows."""

    mode: str  # QUEUE or AUDIT
    rows: list[ResultRow]
    audit_rows: int | None = None

    def url(self, request: Request, job: Job, number: int | None = None) -> URL:
        if self.mode == AUDIT:
            base = request.url_for("review_audit", job_id=job.id).include_query_params(rows=self.audit_rows)
            return base.include_query_params(row=number) if number else base
        base = request.url_for("review_job", job_id=job.id)
        return base.include_query_params(row=number) if number else base

    def next_undecided(self, decisions: dict[int, ReviewDecision], after: int = 0) -> int | None:
        numbers = [r.number for r in self.rows if r.number not in decisions]
        later = [n for n in numbers if n > after]
        candidates = later or numbers
        return candidates[0] if candidates else None


def _audit_list(queue: JobQueue, rows: int | None, share: float | None) -> RowList:
    size = audit_size(queue.auto_coded, share / 100 if share is not None else None, rows)
    return RowList(AUDIT, queue.audit_sample(size), size)


def _row_view(
    request: Request,
    session: Session,
    current: web.ReviewSession,
    job: Job,
    listing: RowList | None,
    queue: JobQueue | None,
    row: int | None,
) -> HTMLResponse:
    context = _page(current, job=job, job_name=job_name(job), mode=listing.mode if listing else QUEUE)
    if listing is None or queue is None:
        return _render(request, "job.html", {**context, "queue": None, "row": None})
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
    audit = audit_counts(decisions.values(), queue.counts)
    default_audit = audit_size(queue.auto_coded)
    return _render(
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
            "audit": audit,
            "default_audit": default_audit,
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
            "evidence": _evidence(request, current_row) if current_row else {},
            "title_of": lambda code: taxonomy.title(code) if code and code in taxonomy else "",
            "error": request.query_params.get("error"),
            "recent": sorted(
                (d for d in decisions.values() if d.row_number in in_list),
                key=lambda d: d.decided_at,
                reverse=True,
            )[:5],
        },
    )


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
    if job.status != JobStatus.succeeded:
        return _row_view(request, session, current, job, None, None, None)
    queue = _queue_cache(request).get(job)
    return _row_view(request, session, current, job, RowList(QUEUE, queue.rows), queue, row)


@router.get("/jobs/{job_id}/audit", name="review_audit")
def audit_page(
    job_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    row: Annotated[int | None, Query(ge=1)] = None,
    rows: Annotated[str, Query(max_length=12)] = "",
    share: Annotated[str, Query(max_length=12)] = "",
) -> HTMLResponse:
    """The audit of auto-coded rows: a seeded random sample of `rows` of them, or `share` percent (default:
    `AUDIT_SHARE`, at least `AUDIT_MIN_ROWS`), decided like the queue's rows. The page's form
    sends both fields, the one left empty as "" (so they are read here, not by FastAPI's number parsing)."""
    current = _signed_in(request, session, settings)
    job = _owned_job(session, job_id, current)
    size = _number(rows, int, "rows", 0, AUDIT_MAX_ROWS)
    percent = _number(share, float, "share", 0, 100)
    if percent == 0:
        raise HTTPException(422, detail={"error": "share", "message": "share must be above 0 (percent)"})
    if job.status != JobStatus.succeeded:
        return _row_view(request, session, current, job, None, None, None)
    queue = _queue_cache(request).get(job)
    return _row_view(request, session, current, job, _audit_list(queue, size, percent), queue, row)


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


@router.post("/jobs/{job_id}/rows/{number}", name="review_decide")
def decide(
    job_id: str,
    number: int,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    action: Annotated[str, Form()] = "",
    code: Annotated[str, Form()] = "",
    choice: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
    audit_rows: Annotated[int | None, Form(ge=0, le=AUDIT_MAX_ROWS)] = None,
) -> Response:
    """Record a decision: `action` and `code` (set by review.js), or the `choice` "action:code" of the button
    a coder pressed without JavaScript."""
    current = _signed_in(request, session, settings)
    web.check_csrf(request, current.csrf, csrf_token)
    if not action:
        action, _, code = choice.partition(":")
    job = _owned_job(session, job_id, current)
    if job.status != JobStatus.succeeded:
        raise HTTPException(409, detail={"error": "not_ready", "message": f"the job is {job.status}"})
    queue = _queue_cache(request).get(job)
    # a row of the review queue, or an auto-coded row a coder checks (one the audit can sample)
    row = next((r for r in queue.rows if r.number == number), None) or next(
        (r for r in queue.audit_pool if r.number == number), None
    )
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
    listing = _audit_list(queue, audit_rows, None) if audit_rows is not None else RowList(QUEUE, queue.rows)
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
        return _redirect(str(listing.url(request, job, number).include_query_params(error=str(exc))))
    session.commit()
    following = listing.next_undecided(decisions_for_job(session, job.id), after=number)
    return _redirect(str(listing.url(request, job, following)))


@router.get("/jobs/{job_id}/result.csv", name="review_result")
def reviewed_result(job_id: str, request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    current = _signed_in(request, session, settings)
    job = _owned_job(session, job_id, current)
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
def job_corrections(job_id: str, request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    current = _signed_in(request, session, settings)
    job = _owned_job(session, job_id, current)
    decisions = owner_decisions(session, current.principal.key_id, job.id)
    return _corrections_response(decisions, f"corrections-{job.id}.csv")


@router.get("/corrections.csv", name="review_corrections")
def all_corrections(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    current = _signed_in(request, session, settings)
    return _corrections_response(owner_decisions(session, current.principal.key_id), "corrections.csv")


@router.get("/codes", name="review_codes")
def codes(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    q: Annotated[str, Query(max_length=200)] = "",
) -> JSONResponse:
    """Unit groups for the code search: each with its official title and the title that matched."""
    _signed_in(request, session, settings)
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


@router.get("/static/{name}", name="review_static")
def static(name: str) -> FileResponse:
    path = STATIC_DIR / name
    if "/" in name or path.suffix not in STATIC_TYPES or not path.is_file():
        raise HTTPException(404, detail={"error": "not_found", "message": "no such file"})
    return FileResponse(path, media_type=STATIC_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})
