"""ReDoc at /redoc from the service's own files (Swagger UI at /docs comes from `FastAPIOffline`).

fastapi-offline serves both UIs' files under `DOCS_STATIC`. Its ReDoc page is replaced by this
one only for the Content-Security-Policy: ReDoc's bundle shows Redocly's logo from
cdn.redoc.ly in its sidebar, with no option to leave it out; the policy keeps the browser from
asking another host for it (the page falls back to the text link).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import HTMLResponse

DOCS_STATIC = "/static-offline-docs"

# styled-components writes <style> elements; the search index runs in a worker from a blob: URL.
REDOC_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "worker-src 'self' blob:; object-src 'none'; base-uri 'self'; frame-ancestors 'none'"
)


def install_redoc(app: FastAPI, url: str = "/redoc") -> None:
    @app.get(url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = REDOC_POLICY
        return page
