"""A thin, typed wrapper over an aiobotocore S3 client.

Addressing style, region and endpoint are settings: AWS prefers virtual-hosted addressing (Alibaba OSS
requires it) while MinIO and SeaweedFS take path style.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import Counter

from shared.config import S3Settings
from shared.exceptions import ObjectMissing, ObjectTooLarge, StorageError, StorageRefused, StorageUnavailable

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
# Refusals that only this record meets: a key the store will never accept, an object too large for it.
# Anything else (5xx, throttling, timeouts, denied credentials, and InvalidRequest / InvalidArgument,
# which stores also answer for their own configuration: Object Lock wanting Content-MD5, a signature or
# region mismatch, SSE settings) is about the store, not the record: retried, never skipped.
_REFUSED = {"KeyTooLongError", "EntityTooLarge", "InvalidObjectName"}


def _storage_error(what: str, exc: ClientError | BotoCoreError) -> StorageError:
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _NOT_FOUND:
            return ObjectMissing(f"{what}: not found")
        if code in _REFUSED:
            return StorageRefused(f"{what} refused: {exc}")
    return StorageUnavailable(f"{what} failed: {exc}")


_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"}


@dataclass(frozen=True)
class S3Counters:
    """Where the client's calls are counted (rmbg_s3_*: shared/telemetry.py)."""

    requests: Counter  # operation
    errors: Counter  # operation, error_class
    retries: Counter  # operation

    def instrument(self, client: Any) -> None:
        """Count every call of ``client`` through botocore's events: the answer (or the failure to get one)
        and the attempts its retry handler spent, whichever method of ObjectStore made it."""
        client.meta.events.register("after-call.s3", self._after_call)
        client.meta.events.register("after-call-error.s3", self._after_call_error)

    def _after_call(self, *, http_response: Any, parsed: dict[str, Any], model: Any, **kwargs: Any) -> None:
        operation = str(model.name)
        self.requests.labels(operation=operation).inc()
        self._count_retries(operation, kwargs.get("context"))
        status = int(getattr(http_response, "status_code", 200))
        if status >= 300:
            code = str(parsed.get("Error", {}).get("Code", ""))
            self.errors.labels(operation=operation, error_class=_error_class(status, code)).inc()

    def _after_call_error(self, *, event_name: str = "", **kwargs: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1] or "unknown"
        self.requests.labels(operation=operation).inc()
        self._count_retries(operation, kwargs.get("context"))
        self.errors.labels(operation=operation, error_class="connection").inc()

    def _count_retries(self, operation: str, context: Any) -> None:
        attempts = context.get("retries", {}).get("attempt", 1) if isinstance(context, dict) else 1
        if attempts > 1:
            self.retries.labels(operation=operation).inc(attempts - 1)


def _error_class(status: int, code: str) -> str:
    if status == 404 or code in _NOT_FOUND or code == "NoSuchBucket":
        return "not_found"
    if status == 429 or code in _THROTTLED:
        return "throttled"
    if status >= 500:
        return "server"
    return "client"


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    content_type: str | None
    metadata: dict[str, str]
    last_modified: datetime | None = None


class ObjectStore:
    def __init__(self, client: Any, bucket: str, *, signer: Any | None = None) -> None:
        self._client = client
        # Presigned URLs are signed for the host clients will send them to (SigV4 signs the Host header):
        # a second client configured with the public endpoint when it differs from the internal one.
        self._signer = signer or client
        self.bucket = bucket

    async def presigned_get(
        self, key: str, *, expires_s: int, download_name: str | None = None, content_type: str | None = None
    ) -> str:
        """A SigV4 URL that lets whoever holds it GET ``key`` for ``expires_s`` seconds (no request is made).

        ``download_name`` asks the store to answer with ``Content-Disposition: attachment``, so a browser
        saves the file under that name instead of showing it.
        """
        params: dict[str, str] = {"Bucket": self.bucket, "Key": key}
        if download_name:
            params["ResponseContentDisposition"] = f'attachment; filename="{download_name}"'
        if content_type:
            params["ResponseContentType"] = content_type
        url: str = await self._signer.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s)
        return url

    async def open_stream(
        self, key: str, *, chunk_bytes: int = 256 * 1024
    ) -> tuple[StoredObject, AsyncIterator[bytes]]:
        """The object's metadata and an iterator over its bytes, for relaying it without holding it whole."""
        try:
            resp = await self._client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _NOT_FOUND:
                raise ObjectMissing(f"object {key} not found in {self.bucket}") from None
            raise _storage_error(f"GET {key}", exc) from exc
        except BotoCoreError as exc:
            raise _storage_error(f"GET {key}", exc) from exc
        info = StoredObject(
            key=key,
            size=int(resp["ContentLength"]),
            content_type=resp.get("ContentType"),
            metadata=dict(resp.get("Metadata", {})),
            last_modified=resp.get("LastModified"),
        )

        async def chunks() -> AsyncIterator[bytes]:
            async with resp["Body"] as stream:
                while chunk := await stream.read(chunk_bytes):
                    yield chunk

        return info, chunks()

    async def ping(self) -> None:
        """HEAD of the bucket: raises StorageError when the store is unreachable or refuses us (readiness)."""
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error(f"HEAD bucket {self.bucket}", exc) from exc

    async def ensure_bucket(self) -> None:
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in _NOT_FOUND | {"NoSuchBucket"}:
                raise StorageUnavailable(f"cannot reach bucket {self.bucket}: {exc}") from exc
            with contextlib.suppress(ClientError):
                await self._client.create_bucket(Bucket=self.bucket)
            await self._client.head_bucket(Bucket=self.bucket)

    async def head(self, key: str, *, bucket: str | None = None) -> StoredObject | None:
        try:
            resp = await self._client.head_object(Bucket=bucket or self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _NOT_FOUND:
                return None
            raise _storage_error(f"HEAD {key}", exc) from exc
        except BotoCoreError as exc:
            raise _storage_error(f"HEAD {key}", exc) from exc
        return StoredObject(
            key=key,
            size=int(resp["ContentLength"]),
            content_type=resp.get("ContentType"),
            metadata=dict(resp.get("Metadata", {})),
        )

    async def put(self, key: str, data: bytes, *, content_type: str, metadata: dict[str, str] | None = None) -> None:
        try:
            await self._client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, Metadata=metadata or {}
            )
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error(f"PUT {key}", exc) from exc

    async def put_if_absent(
        self, key: str, data: bytes, *, content_type: str, metadata: dict[str, str] | None = None
    ) -> bool:
        """Store ``data`` unless the key already holds an object of the same size.

        Keys are content-derived, so an existing object of the same size holds the same bytes; a HEAD
        (about 1 ms) saves re-uploading megabytes when the same image arrives again. Returns whether
        bytes were written.
        """
        existing = await self.head(key)
        if existing is not None and existing.size == len(data):
            return False
        await self.put(key, data, content_type=content_type, metadata=metadata)
        return True

    async def get(self, key: str, *, bucket: str | None = None, max_bytes: int | None = None) -> bytes:
        try:
            resp = await self._client.get_object(Bucket=bucket or self.bucket, Key=key)
            size = int(resp["ContentLength"])
            if max_bytes is not None and size > max_bytes:
                resp["Body"].close()
                raise ObjectTooLarge(f"object {key} of {size} bytes exceeds the limit of {max_bytes}")
            async with resp["Body"] as stream:
                data: bytes = await stream.read()
                return data
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in _NOT_FOUND:
                raise ObjectMissing(f"object {key} not found in {bucket or self.bucket}") from None
            raise _storage_error(f"GET {key}", exc) from exc
        except BotoCoreError as exc:
            raise _storage_error(f"GET {key}", exc) from exc

    async def delete_many(self, keys: list[str], *, concurrency: int = 4) -> int:
        """Batch delete (S3 caps one request at 1,000 keys), up to ``concurrency`` requests in flight.

        It returns, or raises the first request's error, only once every request has ended: a caller that
        acts after the deletes (retention moves the deletion epoch) never runs ahead of one still in flight.
        """
        gate = asyncio.Semaphore(max(1, concurrency))

        async def one(chunk: list[str]) -> int:
            async with gate:
                try:
                    resp = await self._client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True}
                    )
                except (ClientError, BotoCoreError) as exc:
                    raise _storage_error("batch delete", exc) from exc
            errors = resp.get("Errors", [])
            if errors:
                raise StorageUnavailable(f"batch delete refused {len(errors)} keys, first: {errors[0]}")
            return len(chunk)

        ended = await asyncio.gather(
            *(one(keys[start : start + 1000]) for start in range(0, len(keys), 1000)), return_exceptions=True
        )
        deleted = 0
        for outcome in ended:
            if isinstance(outcome, BaseException):
                raise outcome
            deleted += outcome
        return deleted

    async def iter_keys(self, prefix: str) -> AsyncIterator[StoredObject]:
        paginator = self._client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield StoredObject(
                    key=item["Key"],
                    size=int(item["Size"]),
                    content_type=None,
                    metadata={},
                    last_modified=item.get("LastModified"),
                )


@contextlib.asynccontextmanager
async def open_object_store(settings: S3Settings, *, counters: S3Counters | None = None) -> AsyncIterator[ObjectStore]:
    config = AioConfig(
        signature_version="s3v4",
        s3={"addressing_style": settings.addressing_style},
        max_pool_connections=settings.max_pool_connections,
        retries={"max_attempts": 4, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
    )
    session = get_session()
    credentials = {
        "region_name": settings.region,
        "aws_access_key_id": settings.access_key,
        "aws_secret_access_key": settings.secret_key.get_secret_value(),
        "config": config,
    }
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            session.create_client("s3", endpoint_url=settings.endpoint_url, **credentials)
        )
        if counters is not None:
            counters.instrument(client)
        signer = None
        if settings.public_endpoint_url and settings.public_endpoint_url != settings.endpoint_url:
            signer = await stack.enter_async_context(
                session.create_client("s3", endpoint_url=settings.public_endpoint_url, **credentials)
            )
        yield ObjectStore(client, settings.bucket, signer=signer)
