"""The consume loop on the real broker: a failing batch is redelivered, offsets follow side effects."""

from __future__ import annotations

import asyncio
import secrets

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition

from rmbg.stack import StackEndpoints
from shared.config import KafkaSettings, TopicSettings
from shared.messaging import ensure_topics, open_consumer
from shared.worker import ConsumeLoop, LoopOptions


async def _topic_with(stack: StackEndpoints, prefix: str, values: list[bytes]) -> tuple[KafkaSettings, str]:
    """A fresh one-partition topic holding ``values``, and settings tuned for quick group joins."""
    kafka = KafkaSettings(bootstrap_servers=stack.kafka_bootstrap, session_timeout_ms=6000, heartbeat_interval_ms=1000)
    topic = f"{prefix}-{secrets.token_hex(4)}"
    names = {
        "uploads": topic,
        "jobs": f"{topic}-j",
        "results": f"{topic}-r",
        "job_events": f"{topic}-e",
        "dead_letter": f"{topic}-d",
    }
    await ensure_topics(kafka, TopicSettings(**names, partitions=1))
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()
    return kafka, topic


async def test_failed_batch_is_redelivered_and_committed_only_after_success(stack: StackEndpoints) -> None:
    kafka, topic = await _topic_with(stack, "worker", [f"m{i}".encode() for i in range(5)])

    seen: list[bytes] = []
    calls = 0
    stop = asyncio.Event()

    async def handler(records: list[ConsumerRecord[bytes, bytes]]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database is down")  # a dead dependency: nothing may be lost
        seen.extend(r.value or b"" for r in records)
        if len(seen) >= 5:
            stop.set()

    group = f"g-{secrets.token_hex(4)}"
    async with open_consumer(kafka, topics=[topic], group_id=group, client_id="t") as consumer:
        loop = ConsumeLoop(consumer, handler, name="test", options=LoopOptions(max_records=10, backoff_initial_s=0.1))
        await asyncio.wait_for(loop.run(stop), 60)
        committed = await consumer.committed(TopicPartition(topic, 0))
    assert seen == [f"m{i}".encode() for i in range(5)]
    assert loop.batches_failed == 1
    assert committed == 5


async def test_stop_drains_the_batch_in_flight(stack: StackEndpoints) -> None:
    kafka, topic = await _topic_with(stack, "drain", [b"slow"])
    stop = asyncio.Event()
    finished: list[bytes] = []

    async def slow(records: list[ConsumerRecord[bytes, bytes]]) -> None:
        stop.set()  # SIGTERM arrives while the batch is being handled...
        await asyncio.sleep(0.5)  # ...and the handler still completes within the grace period
        finished.extend(r.value or b"" for r in records)

    group = f"g-{secrets.token_hex(4)}"
    async with open_consumer(kafka, topics=[topic], group_id=group, client_id="t") as consumer:
        await asyncio.wait_for(ConsumeLoop(consumer, slow, name="t", options=LoopOptions(grace_s=5)).run(stop), 60)
        committed = await consumer.committed(TopicPartition(topic, 0))
    assert finished == [b"slow"] and committed == 1
