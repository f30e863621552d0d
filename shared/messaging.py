"""Kafka clients, configured in one place.

Producers use acks=all and no idempotence: the broker available here rejects aiokafka's InitProducerId,
and on real Kafka an idempotent producer would still not make consumers exactly-once. A retried send may
therefore duplicate a record; every consumer is idempotent instead (see design/flow.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import BaseModel

from shared.config import KafkaSettings, TopicSettings
from shared.contracts import DeadLetter, Topic
from shared.exceptions import RmbgError

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

_TOPIC_ALREADY_EXISTS = 36
# Dead letters keep at most this much of the offending record, so the dead letter stays small.
_DEAD_LETTER_EXCERPT = 64 * 1024


@contextlib.asynccontextmanager
async def open_producer(kafka: KafkaSettings, *, client_id: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=f"{kafka.client_id}-{client_id}",
        acks="all",
        enable_idempotence=False,
        # 5 ms of lingering batches bursts of job events without adding noticeable latency.
        linger_ms=5,
        # Room for one maximal message plus record-batch framing.
        max_request_size=kafka.max_message_bytes + 64 * 1024,
        request_timeout_ms=kafka.request_timeout_ms,
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def open_consumer(
    kafka: KafkaSettings, *, topics: list[str], group_id: str, client_id: str, max_poll_records: int = 500
) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=f"{kafka.client_id}-{client_id}",
        group_id=group_id,
        enable_auto_commit=False,  # offsets are committed only after side effects are durable
        auto_offset_reset="earliest",
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=kafka.heartbeat_interval_ms,
        max_poll_records=max_poll_records,
        # Inference batches may hold records for minutes on a CPU; 10 min before the group evicts us.
        max_poll_interval_ms=600_000,
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=kafka.max_message_bytes + 64 * 1024,
        request_timeout_ms=max(kafka.request_timeout_ms, kafka.session_timeout_ms + 5000),
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def ensure_topics(kafka: KafkaSettings, topics: TopicSettings) -> list[str]:
    """Create the pipeline's topics that do not exist yet; returns the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, client_id=f"{kafka.client_id}-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in topics.all() if name not in existing]
        if not missing:
            return []
        resp = await admin.create_topics(
            [NewTopic(name, topics.partitions, topics.replication_factor) for name in missing]
        )
        for name, code, *rest in resp.topic_errors:
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise RmbgError(f"cannot create topic {name}: error {code} {rest[0] if rest else ''}")
        return missing
    finally:
        await admin.close()


async def publish(producer: AIOKafkaProducer, topic: Topic[M], message: M, *, key: str) -> None:
    """Send one message and wait for the broker's acknowledgement (acks=all)."""
    await producer.send_and_wait(topic.name, topic.serialize(message), key=key.encode(), headers=topic.headers())


async def send(producer: AIOKafkaProducer, topic: Topic[M], message: M, *, key: str) -> asyncio.Future[Any]:
    """Queue one message without waiting; await the returned future for the acknowledgement.

    Lets a handler send a batch's records in one pipelined burst, then wait for all acks before the
    consume loop commits its offsets.
    """
    future: asyncio.Future[Any] = await producer.send(
        topic.name, topic.serialize(message), key=key.encode(), headers=topic.headers()
    )
    return future


async def dead_letter(
    producer: AIOKafkaProducer,
    topic: Topic[DeadLetter],
    record: ConsumerRecord[bytes, bytes],
    *,
    reason: str,
    service: str,
) -> None:
    letter = DeadLetter(
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key.decode(errors="replace") if record.key else None,
        reason=reason[:4000],
        service=service,
        failed_at=datetime.now(UTC),
        payload=(record.value or b"")[:_DEAD_LETTER_EXCERPT],
    )
    log.warning("dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason[:300])
    await publish(producer, topic, letter, key=letter.key or f"{record.topic}:{record.partition}")
