"""Sign in to the review page with an API key, and out again (the cookie itself: review/session.py).

GET  /review/login, POST /review/login    sign in with an API key (signed session cookie)
POST /review/logout
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse
from starlette.responses import Response

from services.gateway.auth import DEV_PRINCIPAL, authenticate
from services.gateway.deps import SessionDep, SettingsDep
from services.gateway.review import session as web
from services.gateway.review.pages import redirect, render
from services.gateway.review.session import ReviewerDep

log = logging.getLogger(__name__)

router = APIRouter(prefix="/review", include_in_schema=False)


@router.get("/login", name="review_login")
def login_page(request: Request, settings: SettingsDep) -> HTMLResponse:
    token = web.login_token(request, settings)
    page = render(
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
        return render(
            request,
            "login.html",
            {
                "csrf": csrf_token,
                "error": "That API key is not valid (or was revoked).",
                "auth_disabled": False,
            },
            status_code=401,
        )
    response = redirect(str(request.url_for("review_home")))
    web.start_session(request, response, settings, principal)
    log.info("review sign-in", extra={"key_id": principal.key_id})
    return response


@router.post("/logout")
def logout(request: Request, current: ReviewerDep, csrf_token: Annotated[str, Form()] = "") -> Response:
    web.check_csrf(request, current.csrf, csrf_token)
    response = redirect(str(request.url_for("review_login")))
    web.end_session(response)
    return response
