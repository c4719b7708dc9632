"""/docs (Swagger UI) with its scripts and styles served by the gateway from the `swagger-ui-bundle` package,
so the page works offline and behind a proxy prefix (root_path). FastAPI's own /docs loads them from a CDN.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

ASSETS_PATH = "/docs-assets"

router = APIRouter(include_in_schema=False)


def docs_assets() -> StaticFiles:
    """The Swagger UI files, mounted at `ASSETS_PATH` by the app."""
    return StaticFiles(directory=swagger_ui_path)


@router.get("/docs")
async def docs(request: Request) -> Response:
    app = request.app
    root = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - docs",
        swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon-32x32.png",
        oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
    )


@router.get("/docs/oauth2-redirect")
async def docs_oauth2_redirect() -> Response:
    return get_swagger_ui_oauth2_redirect_html()
