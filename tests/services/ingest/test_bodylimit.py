"""The request body cap (services/ingest/bodylimit.py) in front of a FastAPI route that reads a multipart
upload, with the API's own error handlers: too much is refused before the route or its key check runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import httpx
from fastapi import Depends, FastAPI, File, Header, UploadFile

from services.ingest.bodylimit import BodyLimit
from services.ingest.errors import ApiError, install_error_handlers

LIMIT = 64 * 1024


async def key(authorization: Annotated[str | None, Header()] = None) -> str:
    """The route's key check, which FastAPI runs only after it has read the body."""
    if authorization is None:
        raise ApiError(401, "unauthenticated", "missing API key")
    return authorization


Key = Annotated[str, Depends(key)]


def _app() -> tuple[FastAPI, list[int]]:
    seen: list[int] = []
    app = FastAPI()

    @app.post("/upload")
    async def upload(image: Annotated[UploadFile, File()], who: Key) -> dict[str, int]:
        data = await image.read()
        seen.append(len(data))
        return {"bytes": len(data)}

    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=LIMIT)
    return app, seen


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")


async def test_a_body_within_the_limit_reaches_the_route() -> None:
    app, seen = _app()
    async with _client(app) as client:
        resp = await client.post("/upload", files={"image": ("a.png", b"x" * 1000)}, headers={"Authorization": "k"})
    assert resp.status_code == 200 and seen == [1000], resp.text


async def test_a_declared_body_over_the_limit_is_refused_before_the_key_is_asked_for() -> None:
    app, seen = _app()
    async with _client(app) as client:
        resp = await client.post("/upload", files={"image": ("a.png", b"x" * (LIMIT + 1))})
    assert resp.status_code == 413, resp.text
    assert resp.json()["error"]["code"] == "too_large" and str(LIMIT) in resp.json()["error"]["message"]
    assert seen == []


async def test_a_chunked_body_is_cut_off_once_it_passes_the_limit() -> None:
    app, seen = _app()
    sent = 0
    boundary = "b0undary"

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        yield head.encode()
        for _ in range(100):  # 100 x 16 KiB: far over the limit, if it were all read
            sent += 16 * 1024
            yield b"x" * (16 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Authorization": "k"}
    async with _client(app) as client:
        resp = await client.post("/upload", content=body(), headers=headers)
    assert "content-length" not in {k.lower() for k in headers}
    assert resp.status_code == 413, resp.text
    assert resp.json()["error"]["code"] == "too_large"
    assert seen == [] and sent < 2 * LIMIT, "reading stopped at the limit"
