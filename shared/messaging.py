"""Kafka clients, configured in one place.

Producers use acks=all and no idempotence: the broker available here rejects aiokafka's InitProducerId,
and on real Kafka an idempotent producer would still not make consumers exactly-once. A retried send may
therefore duplicate a record; every consumer is idempotent instead (see docs/life-of-a-job.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import RecordMetadata
from prometheus_client import Counter
from pydantic import BaseModel

from shared.config import KafkaSettings, TopicSettings
from shared.contracts import DeadLetter, Topic
from shared.contracts.events import (
    MAX_DEAD_LETTER_KEY,
    MAX_DEAD_LETTER_PAYLOAD,
    MAX_MINIMAL_DEAD_LETTER_REASON,
    dead_letter_payload_room,
)
from shared.exceptions import ContractError, RmbgError
from shared.failures import FailureClass, classify, clean_text, describe
from shared.models import ModelSettings

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

_TOPIC_ALREADY_EXISTS = 36


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


def group_request_timeout_ms(kafka: KafkaSettings) -> int:
    """How long a group member's requests may take: a JoinGroup is answered only once the group settles,
    up to a session timeout later, so 5 s beyond it."""
    return max(kafka.request_timeout_ms, kafka.session_timeout_ms + 5000)


@contextlib.asynccontextmanager
async def open_consumer(
    kafka: KafkaSettings,
    *,
    topics: list[str],
    group_id: str,
    client_id: str,
    max_poll_records: int = 500,
    listener: ConsumerRebalanceListener | None = None,
) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(
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
        fetch_max_wait_ms=kafka.fetch_max_wait_ms,
        request_timeout_ms=group_request_timeout_ms(kafka),
    )
    consumer.subscribe(topics=topics, listener=listener)
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


@contextlib.asynccontextmanager
async def open_tail_consumer(kafka: KafkaSettings, *, topic: str, client_id: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer of every partition of ``topic`` from its end, in no consumer group.

    Without a group every holder sees every record (each ingest replica follows all job events), nothing
    is committed, and a holder that restarts starts at the end again. The end is what the broker says it
    is; on the stand-in broker used here that answer can lie before the true end (docs/test-servers.md:
    "start of last batch + 1", stale after a restart), so a holder must take a replay of recent records
    calmly. Positions are resolved before this returns: a record sent after it is seen.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=f"{kafka.client_id}-{client_id}",
        group_id=None,
        enable_auto_commit=False,
        # A position the broker no longer has (a re-created topic) restarts at the end, not at the start:
        # a tail reader wants what happens from now on.
        auto_offset_reset="latest",
        max_partition_fetch_bytes=kafka.max_message_bytes + 64 * 1024,
        fetch_max_wait_ms=kafka.fetch_max_wait_ms,
        request_timeout_ms=kafka.request_timeout_ms,
    )
    await consumer.start()
    try:
        await consumer.topics()  # metadata, so the topic's partitions are known
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise RmbgError(f"topic {topic} does not exist (rmbg up creates the pipeline's topics)")
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_end(*assigned)
        for tp in assigned:
            await consumer.position(tp)  # asks the broker now rather than at the first fetch
        yield consumer
    finally:
        await consumer.stop()


async def read_topic(kafka: KafkaSettings, topic: Topic[M], *, idle_s: float = 2.0, max_s: float = 120.0) -> list[M]:
    """Every decodable message of ``topic`` from its start, read until nothing arrives for ``idle_s``.

    For checks and operator tools, not for services: the end is judged by silence, not by end offsets
    (which the stand-in broker misreports, docs/test-servers.md), so call it when producers are quiet.
    Records that do not decode are skipped.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=f"{kafka.client_id}-reader",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=kafka.max_message_bytes + 64 * 1024,
        fetch_max_wait_ms=kafka.fetch_max_wait_ms,
        request_timeout_ms=kafka.request_timeout_ms,
    )
    await consumer.start()
    messages: list[M] = []
    try:
        await consumer.topics()
        partitions = consumer.partitions_for_topic(topic.name) or set()
        assigned = [TopicPartition(topic.name, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        loop = asyncio.get_running_loop()
        started = quiet_since = loop.time()
        while loop.time() - started < max_s and loop.time() - quiet_since < idle_s:
            batch = await consumer.getmany(timeout_ms=250, max_records=1000)
            records = [r for recs in batch.values() for r in recs]
            if records:
                quiet_since = loop.time()
            for record in records:
                with contextlib.suppress(ContractError):
                    messages.append(topic.deserialize(record.value))
    finally:
        await consumer.stop()
    return messages


async def ensure_topics(
    kafka: KafkaSettings, topics: TopicSettings, models: ModelSettings | None = None
) -> list[str]:
    """Create the pipeline's topics that do not exist yet, with each served model's jobs topic when
    several are served (ModelSettings.jobs_topic); returns the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, client_id=f"{kafka.client_id}-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = topics.all()
        if models is not None:
            wanted += [models.jobs_topic(topics.jobs, m) for m in models.served]
        wanted = list(dict.fromkeys(wanted))
        missing = [name for name in wanted if name not in existing]
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


async def publish(producer: AIOKafkaProducer, topic: Topic[M], message: M, *, key: str) -> RecordMetadata:
    """Send one message and wait for the broker's acknowledgement (acks=all); returns where it landed."""
    metadata: RecordMetadata = await producer.send_and_wait(
        topic.name, topic.serialize(message), key=key.encode(), headers=topic.headers()
    )
    return metadata


async def committed_offsets(kafka: KafkaSettings, *, group_id: str, topic: str) -> dict[int, int]:
    """The offsets ``group_id`` committed on ``topic``, by partition (partitions never committed are absent).

    Read with OffsetFetch through a consumer that never joins the group (it subscribes to nothing), so
    the group's members are not disturbed.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=f"{kafka.client_id}-offsets",
        group_id=group_id,
        enable_auto_commit=False,
        request_timeout_ms=kafka.request_timeout_ms,
    )
    await consumer.start()
    try:
        await consumer.topics()  # metadata, so the topic's partitions are known
        offsets: dict[int, int] = {}
        for partition in sorted(consumer.partitions_for_topic(topic) or ()):
            committed = await consumer.committed(TopicPartition(topic, partition))
            if committed is not None and committed >= 0:
                offsets[partition] = committed
        return offsets
    finally:
        await consumer.stop()


async def send(producer: AIOKafkaProducer, topic: Topic[M], message: M, *, key: str) -> asyncio.Future[Any]:
    """Queue one message without waiting; await the returned future for the acknowledgement.

    Lets a handler send a batch's records in one pipelined burst, then wait for all acks before the
    consume loop commits its offsets.
    """
    future: asyncio.Future[Any] = await producer.send(
        topic.name, topic.serialize(message), key=key.encode(), headers=topic.headers()
    )
    return future


@dataclass(frozen=True)
class DeadLetters:
    """Where a service sends the records it gives up on, with the reason and its failure class."""

    producer: AIOKafkaProducer
    topic: Topic[DeadLetter]
    service: str
    counter: Counter  # rmbg_dead_letters_total{topic, failure_class}

    async def send(
        self, record: ConsumerRecord[bytes, bytes], reason: str, *, error: BaseException | None = None
    ) -> None:
        """Dead-letter ``record``; ``error`` (what made the service give up) gives the failure class.

        The letter keeps as much of the record as the dead-letter topic's limit leaves (all of it up to
        MAX_DEAD_LETTER_PAYLOAD). Should the topic still refuse it (a permanent error: a broker whose
        max.message.bytes is below ours, a reason too long for a small limit), a minimal letter is sent
        instead: the record's position and the reason, no payload. Giving up must end: a letter that can
        never be sent would hold the record's partition back for good. Transient errors propagate."""
        unknown = error is not None and classify(error) is FailureClass.UNKNOWN
        letter = DeadLetter(
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=_letter_key(record.key),
            reason=clean_text(reason, limit=4000),
            failure_class="unknown" if unknown else "permanent",
            service=self.service,
            failed_at=datetime.now(UTC),
            payload=b"",
        )
        key = letter.key or f"{record.topic}:{record.partition}"
        try:
            await publish(self.producer, self.topic, self._fitted(letter, record.value or b""), key=key)
        except Exception as exc:
            if classify(exc) is FailureClass.TRANSIENT:
                raise
            why = f"record not kept ({describe(exc, limit=300)}): {letter.reason}"
            why = clean_text(why, limit=MAX_MINIMAL_DEAD_LETTER_REASON)
            letter = letter.model_copy(update={"reason": why, "payload_truncated": bool(record.value)})
            await publish(self.producer, self.topic, letter, key=key)
        log.warning(
            "dead-lettered %s[%d]@%d (%s): %s",
            record.topic,
            record.partition,
            record.offset,
            letter.failure_class,
            letter.reason[:300],
        )
        self.counter.labels(topic=record.topic, failure_class=letter.failure_class).inc()

    def _fitted(self, letter: DeadLetter, value: bytes) -> DeadLetter:
        """``letter`` (without payload) with as much of ``value`` as the topic's limit leaves.

        Measured rather than estimated: the letter without its payload (and with payload_truncated false,
        the longer of the two), then 4 base64 characters for every 3 bytes of payload. ContractError when
        even the letter without payload is too large."""
        spare = self.topic.max_message_bytes - len(self.topic.serialize(letter))
        room = min(dead_letter_payload_room(spare), MAX_DEAD_LETTER_PAYLOAD)
        return letter.model_copy(update={"payload": value[:room], "payload_truncated": len(value) > room})

    async def or_send(
        self, record: ConsumerRecord[bytes, bytes], reason: str, error: BaseException, ending: Awaitable[None]
    ) -> None:
        """Run ``ending`` (failing the record's job); should it fail for anything but an outage, dead-letter
        the record instead. Giving up on a record therefore always ends, never loops."""
        try:
            await ending
        except Exception as exc:
            if classify(exc) is FailureClass.TRANSIENT:
                raise
            why = f"{reason}; its job could not be failed: {describe(exc, limit=500)}"
            await self.send(record, why, error=error)


def _letter_key(key: bytes | None) -> str | None:
    """A record's key as a dead letter keeps it: text, at most MAX_DEAD_LETTER_KEY characters (invalid UTF-8
    becomes U+FFFD; no character is longer than 4 bytes, so only that much is decoded)."""
    if not key:
        return None
    return key[: 4 * MAX_DEAD_LETTER_KEY].decode(errors="replace")[:MAX_DEAD_LETTER_KEY]
