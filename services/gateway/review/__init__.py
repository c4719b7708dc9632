"""The review web page (routes, templates, static files, session and CSRF helpers)."""

from services.gateway.review.routes import router

__all__ = ["router"]
