"""The consume loop's own decisions against an in-memory consumer (the loop does no I/O of its own): a
commit that never returns, a give_up that fails, and the backoff while other partitions have traffic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import cast

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

import shared.worker
from shared.exceptions import ContractError
from shared.health import ConsumerWatch
from shared.worker import ConsumeLoop, LoopOptions, Record, RecordFailure

TOPIC = "t"


def _record(partition: int, offset: int, value: bytes) -> Record:
    return ConsumerRecord(
        topic=TOPIC,
        partition=partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=None,
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=len(value),
        headers=(),
    )


class _Consumer:
    """Partitions of records with a position each; ``getmany`` serves one partition per call, in turn (as a
    broker's fetches may), commits are remembered, and ``outage`` makes a commit wait forever, as aiokafka's
    does while the group coordinator is unknown. ``traffic`` partitions get a new record at every poll."""

    def __init__(self, partitions: dict[int, list[bytes]], *, traffic: frozenset[int] = frozenset()) -> None:
        self.logs = {p: [_record(p, o, v) for o, v in enumerate(values)] for p, values in partitions.items()}
        self.positions = dict.fromkeys(self.logs, 0)
        self.committed: dict[TopicPartition, int] = {}
        self.commits_started = 0
        self.outage = False
        self._traffic = traffic
        self._turn = 0

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        for p in self._traffic:
            self.logs[p].append(_record(p, len(self.logs[p]), b"other"))
        ready = [p for p in sorted(self.logs) if self.positions[p] < len(self.logs[p])]
        if not ready:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        p = ready[self._turn % len(ready)]
        self._turn += 1
        records = self.logs[p][self.positions[p] :][:max_records]
        self.positions[p] += len(records)
        await asyncio.sleep(0)
        return {TopicPartition(TOPIC, p): records}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp.partition] = offset

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits_started += 1
        if self.outage:
            await asyncio.Event().wait()
        self.committed.update(offsets)


class _Handler:
    def __init__(
        self,
        fail: Callable[[Record], BaseException | None] = lambda r: None,
        give_up_error: Callable[[int], BaseException | None] = lambda n: None,
    ) -> None:
        self.handled: list[tuple[int, int]] = []
        self.given_up = 0
        self._fail = fail
        self._give_up_error = give_up_error

    async def __call__(self, records: list[Record]) -> list[RecordFailure]:
        self.handled.extend((r.partition, r.offset) for r in records)
        failures = [(r, self._fail(r)) for r in records]
        return [RecordFailure(r, e) for r, e in failures if e is not None]

    async def give_up(self, record: Record, error: BaseException, reason: str) -> None:
        self.given_up += 1
        failed = self._give_up_error(self.given_up)
        if failed is not None:
            raise failed


FAST = LoopOptions(max_records=10, max_wait_ms=10, backoff_initial_s=0.01, backoff_max_s=0.05)


def _loop(consumer: _Consumer, handler: _Handler, options: LoopOptions = FAST) -> ConsumeLoop:
    return ConsumeLoop(cast(AIOKafkaConsumer, consumer), handler, name="t", options=options, commit_timeout_s=15.0)


async def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# -- a commit that never returns (Kafka outage) -------------------------------------------------------------------


async def test_stop_is_honoured_while_a_commit_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM during an outage: the commit is abandoned within _COMMIT_ON_STOP_S, not waited on until SIGKILL."""
    monkeypatch.setattr(shared.worker, "_COMMIT_ON_STOP_S", 0.2)
    consumer = _Consumer({0: [b"a"]})
    consumer.outage = True
    stop = asyncio.Event()
    run = asyncio.ensure_future(_loop(consumer, _Handler()).run(stop))
    await _until(lambda: consumer.commits_started == 1)
    stop.set()
    started = time.monotonic()
    await asyncio.wait_for(run, 3)
    assert time.monotonic() - started < 1.5
    assert consumer.committed == {}, "abandoned: the record comes again (handlers are idempotent)"


async def test_a_hanging_commit_times_out_and_the_loop_goes_on() -> None:
    """Without a stop the loop still moves: the commit is given up after commit_timeout_s, the next records
    are handled and the watch (/healthz) hears of progress; the commit once the broker is back covers both."""
    consumer = _Consumer({0: [b"a"]})
    consumer.outage = True
    handler = _Handler()
    watch = ConsumerWatch(group="g", topic=TOPIC)
    loop = ConsumeLoop(
        cast(AIOKafkaConsumer, consumer),
        handler,
        name="t",
        options=LoopOptions(max_records=10, max_wait_ms=10),
        commit_timeout_s=0.2,
        watch=watch,
    )
    stop = asyncio.Event()
    run = asyncio.ensure_future(loop.run(stop))
    await _until(lambda: consumer.commits_started == 1)
    commit_began = time.monotonic()
    await _until(lambda: watch.last_progress > commit_began + 0.1)
    consumer.outage = False
    consumer.logs[0].append(_record(0, 1, b"b"))
    await _until(lambda: consumer.committed.get(TopicPartition(TOPIC, 0)) == 2)
    stop.set()
    await asyncio.wait_for(run, 3)
    assert handler.handled == [(0, 0), (0, 1)]


async def test_a_batch_drained_on_stop_is_still_committed() -> None:
    consumer = _Consumer({0: [b"a"]})
    stop = asyncio.Event()

    class Stopping(_Handler):
        async def __call__(self, records: list[Record]) -> list[RecordFailure]:
            stop.set()  # SIGTERM arrives while the batch is handled; the commit after it still goes out
            return await super().__call__(records)

    await asyncio.wait_for(_loop(consumer, Stopping()).run(stop), 3)
    assert consumer.committed == {TopicPartition(TOPIC, 0): 1}


# -- give_up that fails -------------------------------------------------------------------------------------------


async def _run_until_committed(loop: ConsumeLoop, consumer: _Consumer, offset: int, timeout_s: float = 5.0) -> None:
    stop = asyncio.Event()
    run = asyncio.ensure_future(loop.run(stop))
    try:
        await _until(lambda: consumer.committed.get(TopicPartition(TOPIC, 0)) == offset, timeout_s)
    finally:
        stop.set()
        await asyncio.wait_for(run, 3)


def _bad(record: Record) -> BaseException | None:
    return ContractError("broken contract") if record.value == b"bad" else None


async def test_a_give_up_that_fails_permanently_skips_the_record() -> None:
    """A permanent error from give_up is not retried (it never succeeds): the partition moves on."""
    consumer = _Consumer({0: [b"bad", b"ok"]})
    handler = _Handler(_bad, give_up_error=lambda n: ContractError("DeadLetter of 1019447 bytes exceeds 1000000"))
    await _run_until_committed(_loop(consumer, handler), consumer, 2)
    assert handler.given_up == 1
    assert handler.handled == [(0, 0), (0, 1)]


async def test_a_give_up_that_fails_with_an_unknown_error_is_retried_a_bounded_number_of_times() -> None:
    consumer = _Consumer({0: [b"bad", b"ok"]})
    handler = _Handler(_bad, give_up_error=lambda n: RuntimeError("nobody knows"))
    await _run_until_committed(
        _loop(consumer, handler, replace(FAST, max_record_attempts=3, min_unknown_retry_s=0)), consumer, 2
    )
    assert handler.given_up == 3


async def test_a_give_up_that_fails_transiently_is_retried_until_it_ends() -> None:
    consumer = _Consumer({0: [b"bad", b"ok"]})
    handler = _Handler(_bad, give_up_error=lambda n: ConnectionError("broker down") if n < 8 else None)
    await _run_until_committed(
        _loop(consumer, handler, replace(FAST, max_record_attempts=3, min_unknown_retry_s=0)), consumer, 2
    )
    assert handler.given_up == 8, "an outage is waited out, whatever max_record_attempts says"


# -- backoff ------------------------------------------------------------------------------------------------------


async def test_backoff_grows_while_other_partitions_have_traffic(monkeypatch: pytest.MonkeyPatch) -> None:
    """A record failing transiently on partition 0 backs off 0.5, 1, 2, 4 s although the polls in between
    bring partition 1's records through; once it goes through, the backoff starts again from 0.5 s."""
    slept: list[float] = []

    async def sleep(stop: asyncio.Event, seconds: float) -> None:
        slept.append(seconds)
        await asyncio.sleep(0)

    monkeypatch.setattr(shared.worker, "_sleep_or_stop", sleep)
    consumer = _Consumer({0: [b"flaky", b"flaky-too"], 1: []}, traffic=frozenset({1}))
    tries = {b"flaky": 0, b"flaky-too": 0}

    def fail(record: Record) -> BaseException | None:
        if record.value not in tries:
            return None
        tries[record.value] += 1
        wanted = 5 if record.value == b"flaky" else 2  # fails this many times, then goes through
        return ConnectionError("database is down") if tries[record.value] <= wanted else None

    handler = _Handler(fail)
    loop = ConsumeLoop(
        cast(AIOKafkaConsumer, consumer),
        handler,
        name="t",
        options=LoopOptions(max_records=1, max_wait_ms=10, backoff_initial_s=0.5, backoff_max_s=30),
        commit_timeout_s=15.0,
    )
    await _run_until_committed(loop, consumer, 2)
    assert slept == [0.5, 1, 2, 4, 8, 0.5, 1]
