"""The HTML pages: the card preview (/preview) and Swagger UI (/docs), every asset served from here (no CDN).

The pages and their scripts hold no patient data and are open; what they fetch is not: outside --dev,
POST /evaluate and /cds-services/* still need a JWT, which the preview page takes pasted into its
token field (a browser cannot add a bearer header to a page load). Swagger UI's files come from the
`fastapi-offline` package (Swagger UI 5, which reads OpenAPI 3.1), so /docs works offline.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Final

from fastapi import APIRouter, FastAPI
from starlette.responses import FileResponse
from starlette.staticfiles import StaticFiles

STATIC_DIR: Final = Path(__file__).resolve().parent.parent / "static"
SWAGGER_UI_DIR: Final = Path(str(files("fastapi_offline") / "static"))
# The CSP of these pages: their own scripts and styles only, no inline script, fetches to this origin only.
PAGE_CSP: Final = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_PATHS: Final = frozenset({"/preview", "/docs"})

router = APIRouter(include_in_schema=False)


def is_page(path: str) -> bool:
    return path in PAGE_PATHS or path.startswith("/static/")


@router.get("/preview")
async def preview() -> FileResponse:
    """Paste or drop a Bundle or hook request; see the cards as an EHR shows them."""
    return FileResponse(STATIC_DIR / "preview.html", media_type="text/html")


@router.get("/docs")
async def docs() -> FileResponse:
    return FileResponse(STATIC_DIR / "docs.html", media_type="text/html")


def mount_static(app: FastAPI) -> None:
    app.mount("/static/swagger-ui", StaticFiles(directory=SWAGGER_UI_DIR), name="swagger-ui")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
