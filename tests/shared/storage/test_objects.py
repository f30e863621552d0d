"""ObjectStore against the real S3 server (SeaweedFS): each call, and how its errors are classified."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from rmbg.stack import StackEndpoints
from rmbg.stack.processes import free_port
from shared.config import S3Settings
from shared.exceptions import ObjectMissing, ObjectTooLarge, StorageUnavailable
from shared.failures import FailureClass, classify
from shared.storage import ObjectStore, open_object_store


def _settings(stack: StackEndpoints, bucket: str) -> S3Settings:
    return S3Settings(
        endpoint_url=stack.s3_endpoint,
        access_key=stack.s3_access_key,
        secret_key=SecretStr(stack.s3_secret_key),
        bucket=bucket,
    )


@pytest.fixture(scope="module")
async def store(stack: StackEndpoints) -> AsyncIterator[ObjectStore]:
    """One bucket for the module (each bucket costs the server a volume); tests use prefixes of their own."""
    async with open_object_store(_settings(stack, f"objects-{secrets.token_hex(4)}")) as s3:
        await s3.ensure_bucket()
        yield s3


@pytest.fixture
def prefix() -> str:
    return f"t{secrets.token_hex(4)}"


async def test_put_head_get(store: ObjectStore, prefix: str) -> None:
    key = f"{prefix}/a.png"
    await store.put(key, b"\x89PNG bytes", content_type="image/png", metadata={"sha256": "abc"})
    head = await store.head(key)
    assert head is not None
    assert (head.key, head.size, head.content_type, head.metadata) == (key, 10, "image/png", {"sha256": "abc"})
    assert await store.get(key) == b"\x89PNG bytes"
    await store.put(key, b"replaced", content_type="image/png")
    assert await store.get(key) == b"replaced", "put overwrites"
    assert await store.head(f"{prefix}/absent") is None


async def test_put_if_absent_writes_only_when_needed(store: ObjectStore, prefix: str) -> None:
    key = f"{prefix}/content-key"
    assert await store.put_if_absent(key, b"12345", content_type="application/octet-stream") is True
    assert await store.put_if_absent(key, b"12345", content_type="application/octet-stream") is False
    # Keys derive from content, so the same size means the same bytes; another size is a partial write.
    assert await store.put_if_absent(key, b"1234567", content_type="application/octet-stream") is True
    assert await store.get(key) == b"1234567"


async def test_get_refuses_an_object_over_max_bytes(store: ObjectStore, prefix: str) -> None:
    key = f"{prefix}/big"
    await store.put(key, b"x" * 4096, content_type="application/octet-stream")
    assert await store.get(key, max_bytes=4096) == b"x" * 4096
    with pytest.raises(ObjectTooLarge, match="4096 bytes exceeds the limit of 4095") as too_large:
        await store.get(key, max_bytes=4095)
    assert classify(too_large.value) is FailureClass.PERMANENT
    # The refused body was released: the client still answers afterwards.
    assert await store.get(key, max_bytes=10_000) == b"x" * 4096


async def test_a_missing_key_is_object_missing_and_permanent(store: ObjectStore, prefix: str) -> None:
    for read in (
        store.get(f"{prefix}/nothing"),
        store.open_stream(f"{prefix}/nothing"),
        store.get(f"{prefix}/nothing", bucket=store.bucket, max_bytes=10),
    ):
        with pytest.raises(ObjectMissing) as missing:
            await read
        assert classify(missing.value) is FailureClass.PERMANENT


async def test_delete_many_and_iter_keys_over_a_thousand_keys(store: ObjectStore, prefix: str) -> None:
    keys = [f"{prefix}/many/{i:05d}" for i in range(1005)]
    limit = asyncio.Semaphore(16)

    async def put(key: str) -> None:
        async with limit:
            await store.put(key, key.encode(), content_type="text/plain")

    await asyncio.gather(*(put(k) for k in keys))
    await store.put(f"{prefix}/other", b"kept", content_type="text/plain")

    listed = [obj async for obj in store.iter_keys(f"{prefix}/many/")]  # more than one page of 1,000
    assert [obj.key for obj in listed] == keys
    assert all(obj.size == len(obj.key) and obj.last_modified is not None for obj in listed)

    # Two batch requests (S3 takes at most 1,000 keys in one); keys already gone count as deleted.
    assert await store.delete_many([*keys, f"{prefix}/never-existed"]) == 1006
    assert [obj async for obj in store.iter_keys(f"{prefix}/many/")] == []
    assert await store.get(f"{prefix}/other") == b"kept", "only the named keys are deleted"
    assert await store.delete_many([]) == 0


async def test_delete_many_sends_requests_concurrently_and_ends_after_all_of_them() -> None:
    events: list[str] = []

    class Client:  # stands in for the S3 client: the first request fails at once, the others take a while
        async def delete_objects(self, *, Bucket: str, Delete: dict[str, Any]) -> dict[str, Any]:
            first = Delete["Objects"][0]["Key"]
            events.append(f"start {first}")
            if first == "k0000":
                return {"Errors": [{"Key": first, "Code": "AccessDenied"}]}
            await asyncio.sleep(0.05)
            events.append(f"end {first}")
            return {}

    store = ObjectStore(Client(), "bucket")
    keys = [f"k{i:04d}" for i in range(3500)]
    with pytest.raises(StorageUnavailable, match="refused 1 keys"):
        await store.delete_many(keys, concurrency=2)
    # Two in flight at once, and the error is raised only after every request has ended.
    assert events[:2] == ["start k0000", "start k1000"]
    assert sorted(e for e in events if e.startswith("end")) == ["end k1000", "end k2000", "end k3000"]


async def test_presigned_get(store: ObjectStore, prefix: str) -> None:
    key = f"{prefix}/shared.png"
    await store.put(key, b"presigned bytes", content_type="image/png")
    url = await store.presigned_get(key, expires_s=60)
    download = await store.presigned_get(key, expires_s=60, download_name="cut.png", content_type="image/x-test")
    async with httpx.AsyncClient(timeout=10) as client:
        got = await client.get(url)
        assert got.status_code == 200 and got.content == b"presigned bytes"
        named = await client.get(download)
        assert named.status_code == 200
        assert named.headers["content-disposition"] == 'attachment; filename="cut.png"'
        assert named.headers["content-type"] == "image/x-test"
        # The signature covers the key: another key with the same signature is refused.
        tampered = await client.get(url.replace("shared.png", "other.png"))
        assert tampered.status_code == 403
        unsigned = await client.get(url.split("?", 1)[0])
        assert unsigned.status_code == 403


async def test_open_stream_relays_the_bytes_in_chunks(store: ObjectStore, prefix: str) -> None:
    key = f"{prefix}/stream.bin"
    data = secrets.token_bytes(300_000)
    await store.put(key, data, content_type="application/x-test", metadata={"k": "v"})
    info, chunks = await store.open_stream(key, chunk_bytes=64 * 1024)
    assert (info.key, info.size, info.content_type, info.metadata) == (key, len(data), "application/x-test", {"k": "v"})
    parts = [part async for part in chunks]
    assert b"".join(parts) == data
    assert len(parts) >= 2 and all(len(p) <= 64 * 1024 for p in parts)


async def test_ensure_bucket_is_idempotent(store: ObjectStore) -> None:
    await store.ensure_bucket()
    await store.ensure_bucket()


async def test_an_unreachable_store_is_storage_unavailable_and_transient() -> None:
    port = free_port()  # nothing listens there
    settings = S3Settings(
        endpoint_url=f"http://127.0.0.1:{port}", access_key="k", secret_key=SecretStr("s"), bucket="nowhere"
    )
    async with open_object_store(settings) as unreachable:
        calls = {
            "get": unreachable.get("k"),
            "head": unreachable.head("k"),
            "put": unreachable.put("k", b"x", content_type="text/plain"),
            "delete": unreachable.delete_many(["k"]),
            "stream": unreachable.open_stream("k"),
        }
        results = await asyncio.gather(*calls.values(), return_exceptions=True)
    for name, result in zip(calls, results, strict=True):
        assert isinstance(result, StorageUnavailable), (name, result)
        assert classify(result) is FailureClass.TRANSIENT


async def test_refused_credentials_are_about_the_store_not_the_record(
    stack: StackEndpoints, store: ObjectStore
) -> None:
    """A wrong secret is a deployment fault: retried (transient), never taken for a missing object."""
    await store.put("credentials-probe", b"x", content_type="text/plain")
    wrong = S3Settings(
        endpoint_url=stack.s3_endpoint, access_key=stack.s3_access_key, secret_key=SecretStr("wrong"),
        bucket=store.bucket,
    )
    async with open_object_store(wrong) as denied:
        for call in (denied.get("credentials-probe"), denied.put("p", b"x", content_type="text/plain")):
            with pytest.raises(StorageUnavailable) as refused:
                await call
            assert classify(refused.value) is FailureClass.TRANSIENT
        with pytest.raises(StorageUnavailable):
            await denied.head("credentials-probe")
