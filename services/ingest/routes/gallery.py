"""The gallery: a browser page at ``/`` over this same API (sign in with a key, upload, follow, browse).

Hand-written files from ``services/ingest/static/`` (HTML, CSS, JS modules): no build step, and nothing is
fetched from anywhere else. The page and its files need no key because they hold no data: the page asks
for the key and sends it on each /v1 call itself. Not in the OpenAPI document: they are not API.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from services.ingest.errors import not_found

router = APIRouter(include_in_schema=False)

# Explicit types: a JS module served as anything but JavaScript is refused by the browser, and the
# platform's mimetypes table (which guesses otherwise) differs between machines.
_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}

# The page runs only its own files. Images may come from anywhere over http(s) because the cut-outs are
# presigned object-store URLs on another origin; connect-src likewise, for the blob fallback that follows
# the API's redirect to the object store.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data: http: https:; "
    "connect-src 'self' http: https:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    # Presigned URLs are credentials for a while: no page they are loaded from should be told of them.
    "Referrer-Policy": "no-referrer",
    # Revalidate each time (the ETag makes that cheap), so a deployed change shows at the next load.
    "Cache-Control": "no-cache",
}


def static_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "static"


def _file(path: Path) -> FileResponse:
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers=_HEADERS)


@router.get("/")
async def index() -> FileResponse:
    return _file(static_dir() / "index.html")


@router.get("/static/{name:path}")
async def static_file(name: str) -> FileResponse:
    """One of the page's files; anything outside the folder, or of a type the page does not use, is 404."""
    root = static_dir()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or path.suffix not in _MEDIA_TYPES or not path.is_file():
        raise not_found(f"file {name}")
    return _file(path)
