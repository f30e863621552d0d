"""shared.messaging on the real broker: where a publish lands, dead letters, committed offsets, tail reads."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from rmbg.stack import StackEndpoints
from shared.config import KafkaSettings, TopicSettings
from shared.contracts import DeadLetter, Topics, UploadEvent
from shared.contracts.events import MAX_DEAD_LETTER_PAYLOAD
from shared.exceptions import RmbgError
from shared.messaging import (
    DeadLetters,
    committed_offsets,
    ensure_topics,
    open_consumer,
    open_producer,
    open_tail_consumer,
    publish,
)
from shared.telemetry import PipelineMetrics
from tests.support.kafka import read_back, read_topic, wait_committed


@pytest.fixture(scope="module")
async def kafka(stack: StackEndpoints) -> KafkaSettings:
    # A short session timeout: the stand-in broker holds a group's first join for half of it.
    return stack.kafka_settings(session_timeout_ms=2000, heartbeat_interval_ms=500)


@pytest.fixture
async def topics(kafka: KafkaSettings) -> Topics:
    """Fresh topics of three partitions for each test."""
    run = secrets.token_hex(4)
    names = TopicSettings(
        uploads=f"m{run}.uploads",
        jobs=f"m{run}.jobs",
        results=f"m{run}.results",
        job_events=f"m{run}.job-events",
        dead_letter=f"m{run}.dead-letter",
        partitions=3,
    )
    await ensure_topics(kafka, names)
    return Topics.from_settings(names, kafka)


@pytest.fixture
async def producer(kafka: KafkaSettings) -> AsyncIterator[AIOKafkaProducer]:
    async with open_producer(kafka, client_id="test-messaging") as p:
        yield p


def _upload(n: int) -> UploadEvent:
    return UploadEvent(event_id=f"e{n}", user_id="u1", key=f"incoming/{n}.png", occurred_at=datetime.now(UTC))


async def test_ensure_topics_creates_only_what_is_missing(kafka: KafkaSettings, topics: Topics) -> None:
    names = TopicSettings(
        uploads=topics.uploads.name,
        jobs=topics.jobs.name,
        results=topics.results.name,
        job_events=topics.job_events.name,
        dead_letter=f"{topics.dead_letter.name}-2",
        partitions=3,
    )
    assert await ensure_topics(kafka, names) == [names.dead_letter]
    assert await ensure_topics(kafka, names) == []


async def test_publish_returns_where_the_record_landed(
    kafka: KafkaSettings, topics: Topics, producer: AIOKafkaProducer
) -> None:
    events = [_upload(n) for n in range(4)]
    landed = [await publish(producer, topics.uploads, event, key="same-key") for event in events]
    # One key, one partition, consecutive offsets in the order sent.
    assert {m.topic for m in landed} == {topics.uploads.name}
    assert len({m.partition for m in landed}) == 1
    assert [m.offset for m in landed] == list(range(landed[0].offset, landed[0].offset + 4))
    records = await read_back(kafka, landed)
    assert [topics.uploads.deserialize(r.value) for r in records] == events
    assert all(r.key == b"same-key" for r in records)
    assert all(dict(r.headers)["rmbg-schema"] == b"UploadEvent/1" for r in records)


async def _letters(kafka: KafkaSettings, topics: Topics, count: int) -> list[DeadLetter]:
    records = await read_topic(kafka, topics.dead_letter.name, lambda got: len(got) >= count)
    return [topics.dead_letter.deserialize(r.value) for r in records]


async def test_dead_letter_keeps_the_record_and_truncates_an_oversized_payload(
    kafka: KafkaSettings, topics: Topics, producer: AIOKafkaProducer
) -> None:
    small = b'{"not": "an upload event"}'
    large = b"x" * (MAX_DEAD_LETTER_PAYLOAD + 100 * 1024)
    landed = [
        await producer.send_and_wait(topics.uploads.name, small, key=b"k-small"),
        await producer.send_and_wait(topics.uploads.name, large, key=b"k-large"),
    ]
    small_record, large_record = await read_back(kafka, landed)
    metrics = PipelineMetrics.create()
    letters = DeadLetters(producer, topics.dead_letter, "test-service", metrics.dead_letters)

    await letters.send(small_record, "malformed\x00 event", error=ValueError("no idea"))
    await letters.send(large_record, "too big")

    got = {letter.key: letter for letter in await _letters(kafka, topics, 2)}
    whole, cut = got["k-small"], got["k-large"]
    assert (whole.source_topic, whole.partition, whole.offset) == (
        topics.uploads.name,
        small_record.partition,
        small_record.offset,
    )
    assert whole.payload == small and not whole.payload_truncated
    assert whole.service == "test-service"
    assert whole.failure_class == "unknown", "an unclassified error is said to be unknown"
    assert "\x00" not in whole.reason and "malformed" in whole.reason
    assert cut.payload == large[:MAX_DEAD_LETTER_PAYLOAD] and cut.payload_truncated
    assert cut.failure_class == "permanent" and cut.reason == "too big"
    assert (cut.partition, cut.offset) == (large_record.partition, large_record.offset)
    counted = metrics.registry.get_sample_value(
        "rmbg_dead_letters_total", {"topic": topics.uploads.name, "failure_class": "permanent"}
    )
    assert counted == 1


async def test_committed_offsets_reads_what_a_group_committed(
    kafka: KafkaSettings, topics: Topics, producer: AIOKafkaProducer
) -> None:
    topic = topics.uploads.name
    group = f"g-{secrets.token_hex(4)}"
    assert await committed_offsets(kafka, group_id=group, topic=topic) == {}, "a group that never committed"
    landed = [await publish(producer, topics.uploads, _upload(n), key=f"k{n}") for n in range(12)]
    partitions = sorted({m.partition for m in landed})
    assert len(partitions) >= 2, "twelve keys spread over the three partitions"
    async with open_consumer(kafka, topics=[topic], group_id=group, client_id="t") as consumer:
        got = 0
        deadline = asyncio.get_running_loop().time() + 60
        while got < len(landed):
            assert asyncio.get_running_loop().time() < deadline, f"read {got} of {len(landed)}"
            batch = await consumer.getmany(timeout_ms=500)
            got += sum(len(recs) for recs in batch.values())
        # Commit one partition to its end and another half way; the third is never committed.
        first, second = partitions[0], partitions[1]
        ends = {p: max(m.offset for m in landed if m.partition == p) + 1 for p in partitions}
        wanted = {first: ends[first], second: ends[second] - 1}
        await consumer.commit({TopicPartition(topic, p): o for p, o in wanted.items()})
        # Read while the member is still in the group: the member is not disturbed (it commits again below).
        assert await committed_offsets(kafka, group_id=group, topic=topic) == wanted
        assert await wait_committed(kafka, group, topic, wanted, timeout_s=5) == wanted
        await consumer.commit({TopicPartition(topic, second): ends[second]})
    assert await committed_offsets(kafka, group_id=group, topic=topic) == {first: ends[first], second: ends[second]}
    with pytest.raises(AssertionError, match="committed"):  # nothing was sent past the end
        await wait_committed(kafka, group, topic, {first: ends[first] + 1}, timeout_s=1)


async def test_tail_consumer_sees_records_sent_after_it_opened(
    kafka: KafkaSettings, topics: Topics, producer: AIOKafkaProducer
) -> None:
    await publish(producer, topics.uploads, _upload(99), key="before")
    async with open_tail_consumer(kafka, topic=topics.uploads.name, client_id="tail") as tail:
        assert {tp.partition for tp in tail.assignment()} == {0, 1, 2}, "every partition, in no group"
        sent = [await publish(producer, topics.uploads, _upload(n), key=f"after-{n}") for n in range(6)]
        seen: set[tuple[int, int]] = set()
        deadline = asyncio.get_running_loop().time() + 30
        want = {(m.partition, m.offset) for m in sent}
        while not want <= seen:
            assert asyncio.get_running_loop().time() < deadline, f"tail saw {seen}, wanted {want}"
            batch = await tail.getmany(timeout_ms=300)
            seen |= {(r.partition, r.offset) for recs in batch.values() for r in recs}


async def test_tail_consumer_of_a_missing_topic_says_so(kafka: KafkaSettings) -> None:
    with pytest.raises(RmbgError, match="does not exist"):
        async with open_tail_consumer(kafka, topic=f"missing-{secrets.token_hex(4)}", client_id="tail"):
            pass
