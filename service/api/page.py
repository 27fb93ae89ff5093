"""The operator's page at `/`: static HTML, CSS and JS modules from `service/static/`.

The page is a client of the public API (GET /v1/models, POST .../score?detail=map)
and needs nothing else: no build step, no asset from another host. Like /docs it
is open; the API key, when the service has one, is typed into the page and sent
with each API call.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

# Everything from this origin only; blob: for the CSV download link.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)


def install_page(app: FastAPI) -> None:
    """Serve the page at `/` and its files under `/static`."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False, response_model=None)
    async def operator_page() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html",
            media_type="text/html",
            headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"},
        )
