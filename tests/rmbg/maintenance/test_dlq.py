"""`rmbg dlq list` and `rmbg dlq replay` on the real broker: reasons shown, chosen records sent back."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from prometheus_client import CollectorRegistry, Counter

from rmbg.maintenance.dlq import read_dead_letters, replay
from rmbg.stack import StackEndpoints
from shared.config import KafkaSettings, TopicSettings
from shared.contracts import Topics
from shared.messaging import DeadLetters, ensure_topics, open_producer
from tests.support.results import largest_inline_result


def _record(topic: str, offset: int, value: bytes, key: bytes) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=topic,
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key),
        serialized_value_size=len(value),
        headers=(),
    )


async def _setup(stack: StackEndpoints) -> tuple[KafkaSettings, TopicSettings, Topics]:
    run = secrets.token_hex(4)
    kafka = stack.kafka_settings(session_timeout_ms=6000, heartbeat_interval_ms=1000)
    names = TopicSettings(
        uploads=f"d{run}.uploads",
        jobs=f"d{run}.jobs",
        results=f"d{run}.results",
        job_events=f"d{run}.job-events",
        dead_letter=f"d{run}.dead-letter",
        partitions=1,
    )
    await ensure_topics(kafka, names)
    topics = Topics.from_settings(names, kafka)
    counter = Counter("dl", "dead letters", ["topic", "failure_class"], registry=CollectorRegistry())
    async with open_producer(kafka, client_id="test-dlq") as producer:
        letters = DeadLetters(producer, topics.dead_letter, "ingest", counter)
        await letters.send(_record(names.uploads, 3, b'{"not": "an upload"}', b"k1"), "malformed UploadEvent")
        await letters.send(
            _record(names.uploads, 4, b"\x00\x01", b"k2"), "RuntimeError: boom", error=RuntimeError("boom")
        )
    return kafka, names, topics


async def test_list_shows_reasons_and_replay_sends_the_record_back(stack: StackEndpoints) -> None:
    kafka, names, topics = await _setup(stack)
    letters = await read_dead_letters(kafka, topics)
    assert [(s.letter.offset, s.letter.reason, s.letter.failure_class) for s in letters] == [
        (3, "malformed UploadEvent", "permanent"),
        (4, "RuntimeError: boom", "unknown"),
    ]
    assert await read_dead_letters(kafka, topics, source="elsewhere") == []

    sent = await replay(kafka, topics, letters, [letters[0].ref, letters[0].ref])  # named twice: sent once
    assert [s.letter.offset for s in sent] == [3]
    consumer = AIOKafkaConsumer(
        names.uploads, bootstrap_servers=kafka.bootstrap_servers, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=5000)
        while not batch:
            batch = await consumer.getmany(timeout_ms=5000)
        replayed = [(r.key, r.value) for recs in batch.values() for r in recs]
        while more := await consumer.getmany(timeout_ms=1500):  # and nothing after it
            replayed += [(r.key, r.value) for recs in more.values() for r in recs]
    finally:
        await consumer.stop()
    assert replayed == [(b"k1", b'{"not": "an upload"}')]


async def test_cli_lists_and_refuses_an_unknown_letter(stack: StackEndpoints) -> None:
    kafka, names, _ = await _setup(stack)
    env = {
        **os.environ,
        "RMBG_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "RMBG_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "RMBG_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
        "RMBG_TOPICS__DEAD_LETTER": names.dead_letter,
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rmbg.cli", "dlq", *args], env=env, capture_output=True, text=True, timeout=120
        )

    listed = await asyncio.to_thread(cli, "list")
    assert listed.returncode == 0, listed.stderr
    assert "malformed UploadEvent" in listed.stdout and "2 dead letters" in listed.stdout
    refused = await asyncio.to_thread(cli, "replay", "0:999")
    assert refused.returncode == 1 and "no dead letter 0:999" in refused.stderr


async def test_a_result_with_its_mask_inline_is_replayed_whole(stack: StackEndpoints) -> None:
    """The largest result a topic takes at the default limit (a 512 KiB mask inline, about 700 KB) is kept
    whole in its letter (about 940 KB), so replay sends it back rather than refusing a truncated record."""
    kafka, names, topics = await _setup(stack)
    result = largest_inline_result()
    value = topics.results.serialize(result)
    counter = Counter("dl", "dead letters", ["topic", "failure_class"], registry=CollectorRegistry())
    async with open_producer(kafka, client_id="test-dlq") as producer:
        letters = DeadLetters(producer, topics.dead_letter, "persister", counter)
        await letters.send(_record(names.results, 7, value, str(result.job_id).encode()), "no job " + "x" * 3000)
    stored = [s for s in await read_dead_letters(kafka, topics) if s.letter.source_topic == names.results]
    assert len(stored) == 1 and not stored[0].letter.payload_truncated
    await replay(kafka, topics, stored, [stored[0].ref])
    consumer = AIOKafkaConsumer(
        names.results,
        bootstrap_servers=kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=None,
        max_partition_fetch_bytes=kafka.max_message_bytes + 64 * 1024,
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()
    assert record.value == value and topics.results.deserialize(record.value) == result
