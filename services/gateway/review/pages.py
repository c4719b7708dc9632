"""What every review page shares: the templates, the headers that keep a page of personal data private, the
signed-in key in the header, and the job a URL names (owner-scoped like the API: another key's job answers
404, as a missing one does).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.requests import Request
from starlette.responses import Response
from starlette.staticfiles import PathLike, StaticFiles
from starlette.types import Scope

from services.gateway.deps import SessionDep
from services.gateway.review.session import ReviewerDep, ReviewSession
from shared.db.tables import Job
from shared.jobs.state import owned_job
from shared.review.results import REVIEWABLE_KINDS

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=str(HERE / "templates"))

NOT_FOUND = HTTPException(404, detail={"error": "not_found", "message": "no such job"})


def when(moment: Any) -> str:
    """A stored time (UTC) for the page."""
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else ""


templates.env.filters["when"] = when


def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
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


def page(current: ReviewSession, **context: Any) -> dict[str, Any]:
    """What every signed-in page shows: the key in the header, the session's CSRF token."""
    return {"principal": current.principal, "key_label": current.label, "key_prefix": current.prefix,
            "csrf": current.csrf, **context}  # fmt: skip


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def reviewed_job(job_id: str, session: SessionDep, current: ReviewerDep) -> Job:
    """The signed-in key's reviewable job named by the path; 404 otherwise."""
    job = owned_job(session, job_id, current.principal.key_id)
    if job is None or job.kind not in REVIEWABLE_KINDS:
        raise NOT_FOUND
    return job


ReviewedJobDep = Annotated[Job, Depends(reviewed_job)]


class ReviewAssets(StaticFiles):
    """review.js, review.css and favicon.svg, mounted at /review/static by the app. Revalidated on every load
    (no-cache), so a page never runs a script older than the gateway that serves it."""

    def __init__(self) -> None:
        super().__init__(directory=STATIC_DIR)

    def file_response(
        self, full_path: PathLike, stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        return response
