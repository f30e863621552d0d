"""A cap on request bodies, applied before any route reads one.

FastAPI reads and parses a request's whole body (a multipart upload is spooled to a temporary file, its
small parts kept in memory) before it resolves the route's dependencies, the API key among them. Without
a cap anyone could, with no key at all, push any number of bytes into an ingest replica: a 60 MiB body was
read in full before its 401, and 300 parts of 1 MB raised a replica's memory from 113 to 401 MiB (the pod's
limit is 2 GiB). The largest body a route needs is an image at ``RMBG_IMAGES__MAX_BYTES`` plus its form
fields, so that is the cap: a body that declares more is answered 413 before a byte of it is read, and one
sent without a length (chunked) is cut off with 413 as soon as it passes the cap.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.ingest.errors import error_response

# Room for the multipart framing and the other form fields of a submission (tags, params, callback URL:
# a few KiB in practice) on top of the image itself.
FORM_OVERHEAD_BYTES = 1024 * 1024


class BodyLimit:
    """ASGI middleware: request bodies of at most ``max_bytes``, else 413 ``too_large``."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self._app = app
        self._max = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self._max:
            await error_response(413, "too_large", self._message())(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._max:
                    # Raised where the route reads its body: FastAPI passes an HTTPException on (any other
                    # error while parsing a body becomes its 400), and the app's handler answers it in the
                    # API's error shape.
                    raise HTTPException(413, self._message())
            return message

        await self._app(scope, limited, send)

    def _message(self) -> str:
        return f"the request body exceeds the limit of {self._max} bytes"


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # malformed: the server (h11) refuses it before the app sees it
    return None
