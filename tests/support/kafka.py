"""Kafka helpers for tests: records as the consume loop gets them, and waiting on what a group committed.

Every helper reads from the broker over a real connection; none trusts the broker's end offsets (the
stand-in misreports them, docs/test-servers.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import RecordMetadata
from pydantic import BaseModel

from shared.config import KafkaSettings
from shared.contracts import Topic
from shared.messaging import committed_offsets, publish
from shared.worker import Record

M = TypeVar("M", bound=BaseModel)

POLL_S = 0.1


def next_offsets(landed: Iterable[RecordMetadata]) -> dict[int, int]:
    """The offset a consumer commits once it has handled every record in ``landed``, by partition."""
    offsets: dict[int, int] = {}
    for metadata in landed:
        offsets[metadata.partition] = max(offsets.get(metadata.partition, 0), metadata.offset + 1)
    return offsets


async def wait_committed(
    kafka: KafkaSettings, group: str, topic: str, offsets: Mapping[int, int], timeout_s: float = 60
) -> dict[int, int]:
    """Wait until ``group`` has committed at least ``offsets`` (partition -> next offset) on ``topic``.

    This is how a test knows records were consumed and their effects are durable: the consume loop
    commits only after them (shared/worker.py). Returns the committed offsets; AssertionError on timeout.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        committed = await committed_offsets(kafka, group_id=group, topic=topic)
        if all(committed.get(p, -1) >= o for p, o in offsets.items()):
            return committed
        if loop.time() > deadline:
            raise AssertionError(f"{group} committed {committed} on {topic} in {timeout_s} s, wanted {dict(offsets)}")
        await asyncio.sleep(POLL_S)


def _reader(kafka: KafkaSettings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=f"{kafka.client_id}-test-reader",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=kafka.max_message_bytes + 64 * 1024,
        request_timeout_ms=kafka.request_timeout_ms,
    )


async def read_back(kafka: KafkaSettings, landed: Iterable[RecordMetadata], timeout_s: float = 30) -> list[Record]:
    """The records at the places ``landed`` names, fetched from the broker: real ConsumerRecords, in order."""
    wanted = list(landed)
    consumer = _reader(kafka)
    await consumer.start()
    try:
        found: dict[tuple[int, int], Record] = {}
        for metadata in wanted:
            if (metadata.partition, metadata.offset) in found:
                continue
            tp = TopicPartition(metadata.topic, metadata.partition)
            consumer.assign([tp])
            consumer.seek(tp, metadata.offset)
            record: Record = await asyncio.wait_for(consumer.getone(tp), timeout_s)
            assert (record.partition, record.offset) == (metadata.partition, metadata.offset), record
            found[(record.partition, record.offset)] = record
        return [found[(m.partition, m.offset)] for m in wanted]
    finally:
        await consumer.stop()


async def publish_records(
    producer: AIOKafkaProducer, kafka: KafkaSettings, topic: Topic[M], messages: Iterable[tuple[str, M]]
) -> list[Record]:
    """Publish each (key, message) and return them as a consumer of ``topic`` receives them."""
    landed = [await publish(producer, topic, message, key=key) for key, message in messages]
    return await read_back(kafka, landed)


async def read_topic(
    kafka: KafkaSettings,
    topic: str,
    until: Callable[[list[Record]], bool],
    timeout_s: float = 30,
) -> list[Record]:
    """Every record of ``topic`` from its start, read until ``until(records)`` holds (AssertionError on timeout)."""
    consumer = _reader(kafka)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = consumer.partitions_for_topic(topic) or set()
        assert partitions, f"no topic {topic}"
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        records: list[Record] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not until(records):
            if loop.time() > deadline:
                raise AssertionError(f"{topic}: condition not met in {timeout_s} s over {len(records)} records")
            batch = await consumer.getmany(timeout_ms=200)
            records += [r for recs in batch.values() for r in recs]
        return records
    finally:
        await consumer.stop()
