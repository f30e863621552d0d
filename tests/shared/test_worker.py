"""The consume loop on the real broker: a failing batch is redelivered, offsets follow side effects."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from rmbg.stack import StackEndpoints
from shared.config import KafkaSettings, TopicSettings
from shared.exceptions import ContractError
from shared.messaging import ensure_topics, open_consumer
from shared.worker import ConsumeLoop, LoopOptions, Record, RecordFailure

COMMIT_S = 15.0  # KafkaSettings.request_timeout_ms's default, as consume_topic passes it


class _Handler:
    """A handler made of one function; records it gives up on are kept for the test to inspect."""

    def __init__(self, fn: Callable[[list[Record]], Awaitable[list[RecordFailure]]]) -> None:
        self._fn = fn
        self.given_up: list[tuple[bytes, str]] = []

    async def __call__(self, records: list[Record]) -> list[RecordFailure]:
        return await self._fn(records)

    async def give_up(self, record: Record, error: BaseException, reason: str) -> None:
        self.given_up.append((record.value or b"", reason))


async def _topic_with(stack: StackEndpoints, prefix: str, values: list[bytes]) -> tuple[KafkaSettings, str]:
    """A fresh one-partition topic holding ``values``, and settings tuned for quick group joins."""
    kafka = stack.kafka_settings(session_timeout_ms=6000, heartbeat_interval_ms=1000)
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

    async def handler(records: list[ConsumerRecord[bytes, bytes]]) -> list[RecordFailure]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database is down")  # a dead dependency: nothing may be lost
        seen.extend(r.value or b"" for r in records)
        if len(seen) >= 5:
            stop.set()
        return []

    group = f"g-{secrets.token_hex(4)}"
    async with open_consumer(kafka, topics=[topic], group_id=group, client_id="t") as consumer:
        loop = ConsumeLoop(
            consumer,
            _Handler(handler),
            name="test",
            commit_timeout_s=COMMIT_S,
            options=LoopOptions(max_records=10, backoff_initial_s=0.1),
        )
        await asyncio.wait_for(loop.run(stop), 60)
        committed = await consumer.committed(TopicPartition(topic, 0))
    assert seen == [f"m{i}".encode() for i in range(5)]
    assert loop.batches_failed == 1
    assert committed == 5


async def test_stop_drains_the_batch_in_flight(stack: StackEndpoints) -> None:
    kafka, topic = await _topic_with(stack, "drain", [b"slow"])
    stop = asyncio.Event()
    finished: list[bytes] = []

    async def slow(records: list[ConsumerRecord[bytes, bytes]]) -> list[RecordFailure]:
        stop.set()  # SIGTERM arrives while the batch is being handled...
        await asyncio.sleep(0.5)  # ...and the handler still completes within the grace period
        finished.extend(r.value or b"" for r in records)
        return []

    group = f"g-{secrets.token_hex(4)}"
    async with open_consumer(kafka, topics=[topic], group_id=group, client_id="t") as consumer:
        await asyncio.wait_for(
            ConsumeLoop(
                consumer, _Handler(slow), name="t", commit_timeout_s=COMMIT_S, options=LoopOptions(grace_s=5)
            ).run(stop),
            60,
        )
        committed = await consumer.committed(TopicPartition(topic, 0))
    assert finished == [b"slow"] and committed == 1


async def test_one_bad_record_never_holds_up_the_others(stack: StackEndpoints) -> None:
    """Per record: permanent → given up at once; unknown → bounded tries, then given up; transient →
    retried until it succeeds. Records that succeeded are not handled again when the batch is retried."""
    values = [b"ok0", b"permanent", b"ok1", b"unknown", b"transient", b"ok2"]
    kafka, topic = await _topic_with(stack, "taxonomy", values)
    handled: list[bytes] = []
    transient_left = 3
    stop = asyncio.Event()

    async def work(records: list[Record]) -> list[RecordFailure]:
        nonlocal transient_left
        failures: list[RecordFailure] = []
        for record in records:
            value = record.value or b""
            handled.append(value)
            if value == b"permanent":
                failures.append(RecordFailure(record, ContractError("broken contract")))
            elif value == b"unknown":
                failures.append(RecordFailure(record, RuntimeError("nobody knows")))
            elif value == b"transient" and transient_left:
                transient_left -= 1
                failures.append(RecordFailure(record, ConnectionError("database is down")))
        if handled.count(b"transient") == 4:  # its fourth try succeeds
            stop.set()
        return failures

    handler = _Handler(work)
    group = f"g-{secrets.token_hex(4)}"
    async with open_consumer(kafka, topics=[topic], group_id=group, client_id="t") as consumer:
        loop = ConsumeLoop(
            consumer,
            handler,
            name="t",
            commit_timeout_s=COMMIT_S,
            options=LoopOptions(
                max_records=10, backoff_initial_s=0.05, backoff_max_s=0.2, max_record_attempts=3, min_unknown_retry_s=0
            ),
        )
        await asyncio.wait_for(loop.run(stop), 60)
        committed = await consumer.committed(TopicPartition(topic, 0))
    assert [v for v, _ in handler.given_up] == [b"permanent", b"unknown"]
    assert "unclassified error, given up after 3 tries" in handler.given_up[1][1]
    # Each good record was handled exactly once although its batch was retried four times.
    assert handled.count(b"ok0") == handled.count(b"ok1") == handled.count(b"ok2") == 1
    assert handled.count(b"permanent") == 1 and handled.count(b"unknown") == 3 and handled.count(b"transient") == 4
    assert committed == len(values)


async def test_a_handler_that_raises_for_its_batch_is_split_to_find_the_record(stack: StackEndpoints) -> None:
    kafka, topic = await _topic_with(stack, "split", [b"a", b"poison", b"b"])
    done: list[bytes] = []
    stop = asyncio.Event()

    async def work(records: list[Record]) -> list[RecordFailure]:
        if any(r.value == b"poison" for r in records):
            raise ContractError("poison in this batch")  # a handler that does not isolate its records
        done.extend(r.value or b"" for r in records)
        if b"b" in done:
            stop.set()
        return []

    handler = _Handler(work)
    group = f"g-{secrets.token_hex(4)}"
    async with open_consumer(kafka, topics=[topic], group_id=group, client_id="t") as consumer:
        loop = ConsumeLoop(
            consumer,
            handler,
            name="t",
            commit_timeout_s=COMMIT_S,
            options=LoopOptions(max_records=10, backoff_initial_s=0.05),
        )
        await asyncio.wait_for(loop.run(stop), 60)
        committed = await consumer.committed(TopicPartition(topic, 0))
    assert done == [b"a", b"b"] and [v for v, _ in handler.given_up] == [b"poison"] and committed == 3


async def test_fill_wait_gathers_records_that_arrive_after_the_first(stack: StackEndpoints) -> None:
    """Dynamic batching: the first record waits for up to fill_wait_ms for three more that arrive later,
    and the batch is handed over as soon as it is full, not at the end of the wait."""
    kafka, topic = await _topic_with(stack, "fill", [b"first"])
    batches: list[list[bytes]] = []
    stop = asyncio.Event()
    sent_last = 0.0

    async def handler(records: list[ConsumerRecord[bytes, bytes]]) -> list[RecordFailure]:
        batches.append([r.value or b"" for r in records])
        if sum(len(b) for b in batches) >= 4:
            stop.set()
        return []

    async def later(consumer: AIOKafkaConsumer) -> None:
        nonlocal sent_last
        for _ in range(600):  # the group forms within seconds; 30 s at most
            if consumer.assignment():
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the first record has been fetched by now and is waiting for company
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
        await producer.start()
        try:
            for i in range(3):
                await producer.send_and_wait(topic, f"later{i}".encode())
        finally:
            await producer.stop()
        sent_last = time.monotonic()

    options = LoopOptions(max_records=4, max_wait_ms=100, fill_wait_ms=8000)
    group = f"g-{secrets.token_hex(4)}"
    async with open_consumer(kafka, topics=[topic], group_id=group, client_id="t") as consumer:
        feeder = asyncio.ensure_future(later(consumer))
        await asyncio.wait_for(
            ConsumeLoop(consumer, _Handler(handler), name="t", commit_timeout_s=COMMIT_S, options=options).run(stop), 60
        )
        handed_over = time.monotonic()
        await feeder
    assert batches == [[b"first", b"later0", b"later1", b"later2"]]
    assert handed_over - sent_last < 4, "a full batch does not wait out fill_wait_ms"


async def test_a_record_that_recovers_from_an_unknown_error_is_forgotten(stack: StackEndpoints) -> None:
    """Its count of tries goes once it succeeds: it would otherwise stay until the partition is revoked."""
    kafka, topic = await _topic_with(stack, "recovers", [b"flaky", b"ok"])
    tries = 0
    stop = asyncio.Event()

    async def work(records: list[Record]) -> list[RecordFailure]:
        nonlocal tries
        failures: list[RecordFailure] = []
        for record in records:
            if record.value == b"flaky":
                tries += 1
                if tries == 1:
                    failures.append(RecordFailure(record, RuntimeError("nobody knows")))
                else:
                    stop.set()
        return failures

    group = f"g-{secrets.token_hex(4)}"
    async with open_consumer(kafka, topics=[topic], group_id=group, client_id="t") as consumer:
        loop = ConsumeLoop(
            consumer,
            _Handler(work),
            name="t",
            commit_timeout_s=COMMIT_S,
            options=LoopOptions(max_records=10, backoff_initial_s=0.05),
        )
        await asyncio.wait_for(loop.run(stop), 60)
    assert tries == 2
    assert loop._attempts == {}
