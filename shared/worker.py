"""The consume loop every Kafka-driven service runs, with the failure taxonomy applied per record.

- A batch is handed to the service's handler, which works on each record and reports the records that
  failed, each with its exception (:class:`RecordFailure`); one record's error never fails the others.
- Each failure is classified (shared/failures.py): permanent → the handler's ``give_up`` ends that record
  (fails its job or dead-letters it) and the line goes on; transient → the record is retried after a
  backoff, nothing is skipped; unknown → retried ``max_record_attempts`` times and for at least
  ``min_unknown_retry_s``, then permanent.
- Offsets are committed only after the side effects they cover are durable: per partition up to the
  first record still to retry. Records after it that already succeeded are remembered and skipped
  when the rewind delivers them again, so a retried batch does not repeat their effects.
- SIGTERM only sets the stop event; the batch in flight drains within ``grace_s`` and is then
  cancelled, uncommitted, for redelivery (every handler is idempotent).
- A commit waits at most ``commit_timeout_s`` (``_COMMIT_ON_STOP_S`` once stopping): aiokafka retries a commit
  without end while the group coordinator is unknown, and a loop stuck there would neither stop nor poll.
  An abandoned commit is like a refused one: a later commit covers its records, or they are redelivered.
- The loop reports to a :class:`~shared.health.ConsumerWatch` (its assignment, and that it still polls, for
  /readyz and /healthz) and, every ``lag_interval_s``, the lag of each partition it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from prometheus_client import Counter, Gauge, Histogram

from shared.config import KafkaSettings
from shared.failures import FailureClass, classify, clean_text, describe
from shared.health import ConsumerWatch
from shared.messaging import group_request_timeout_ms, open_consumer

log = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]
RecordId: TypeAlias = tuple[str, int, int]  # topic, partition, offset
T = TypeVar("T")

# Once stopping, a commit gets this long before it is abandoned: a broker that is up answers in
# milliseconds, and the shortest pod grace beyond a service's batch grace (stats: 30 s less 10 s) must
# still hold the consumer's stop.
_COMMIT_ON_STOP_S = 5.0


@dataclass(frozen=True)
class RecordFailure:
    """One record of a batch that did not succeed, with what it raised."""

    record: Record
    error: BaseException


class BatchHandler(Protocol):
    async def __call__(self, records: list[Record]) -> Sequence[RecordFailure]:
        """Handle every record; return the ones that failed (an empty list: all durable)."""

    async def give_up(self, record: Record, error: BaseException, reason: str) -> None:
        """End a record that can never succeed: fail its job with ``reason`` or dead-letter it."""


def record_id(record: Record) -> RecordId:
    return (record.topic, record.partition, record.offset)


async def each_record(
    records: Iterable[T], work: Callable[[T], Awaitable[object]], *, limit: asyncio.Semaphore | None = None
) -> list[tuple[T, BaseException]]:
    """Run ``work`` on every item concurrently (at most ``limit`` at once); returns the items that raised."""

    async def one(item: T) -> tuple[T, BaseException] | None:
        try:
            if limit is None:
                await work(item)
            else:
                async with limit:
                    await work(item)
        except Exception as exc:
            return item, exc
        return None

    results = await asyncio.gather(*(one(item) for item in records))
    return [r for r in results if r is not None]


@dataclass(frozen=True)
class LoopOptions:
    max_records: int = 100
    # How long one poll blocks when nothing is waiting (then the stop flag is checked again).
    max_wait_ms: int = 200
    # Dynamic batching: once a poll has returned records, keep polling for up to this long while the batch
    # is short of max_records. 0 hands over whatever one poll returned (a poll returns at once with what is
    # already fetched, so under light load batches are of one record). Inference sets it to fill GPU batches.
    fill_wait_ms: int = 0
    grace_s: float = 30.0
    # Backoff after a batch with records to retry: 0.5 s doubling to 30 s, so a dead database is not hammered.
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    # An error of unknown class gets this many tries per record, and at least this long from its first
    # failure (5 tries at 0.5 s doubling are spent in 7.5 s, well within an outage nobody classified), then
    # counts as permanent: never an endless loop on one record.
    max_record_attempts: int = 5
    min_unknown_retry_s: float = 60.0
    # How often the lag of the partitions held is read (end offsets and committed offsets from the broker).
    lag_interval_s: float = 15.0


@dataclass(frozen=True)
class LoopMetrics:
    batches_failed: Counter | None = None
    records_failed: Counter | None = None  # labels: topic, failure_class
    batch_records: Histogram | None = None  # labels: topic
    lag: Gauge | None = None  # labels: group, topic, partition
    partitions: Gauge | None = None  # labels: group, topic


class ConsumeLoop:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        handler: BatchHandler,
        *,
        name: str,
        options: LoopOptions,
        commit_timeout_s: float,
        metrics: LoopMetrics | None = None,
        watch: ConsumerWatch | None = None,
    ) -> None:
        self._consumer = consumer
        self._handler = handler
        self._name = name
        self._options = options
        self._commit_timeout_s = commit_timeout_s
        self._metrics = metrics or LoopMetrics()
        self._watch = watch
        self.batches_failed = 0
        # Records that succeeded in a batch whose other records are being retried (skipped on redelivery).
        self._done: dict[TopicPartition, set[int]] = defaultdict(set)
        # Tries so far of records whose errors are of unknown class, and of give_up calls that failed so.
        self._attempts: dict[RecordId, tuple[int, float]] = {}  # tries, monotonic time of the first
        self._give_up_attempts: dict[RecordId, tuple[int, float]] = {}
        # Records being retried: the backoff resets only once they have all gone through, not after any
        # batch without retries (with traffic on other partitions that kept it at backoff_initial_s).
        self._retrying: set[RecordId] = set()

    async def run(self, stop: asyncio.Event) -> None:
        backoff = self._options.backoff_initial_s
        while not stop.is_set():
            batch = await self._poll()
            if self._watch is not None:
                self._watch.progressed()
            if not any(batch.values()):
                continue
            todo = [r for tp, recs in batch.items() for r in recs if r.offset not in self._done.get(tp, ())]
            if todo and self._metrics.batch_records is not None:
                self._metrics.batch_records.labels(topic=todo[0].topic).observe(len(todo))
            if self._watch is not None:
                self._watch.batch_started()
            failures = await self._handle(todo, stop) if todo else []
            if failures is None:  # stopped before the batch drained: all of it comes again
                self._rewind({tp: recs[0].offset for tp, recs in batch.items() if recs})
                return
            self._forget_succeeded(todo, failures)
            retry = await self._settle(failures)
            # What this batch held has gone through or was given up, but for what is retried again.
            self._retrying -= {record_id(r) for recs in batch.values() for r in recs}
            self._retrying |= {record_id(r) for r in retry}
            if not retry:
                await self._commit({tp: recs[-1].offset + 1 for tp, recs in batch.items() if recs}, stop)
                if not self._retrying:
                    backoff = self._options.backoff_initial_s
                continue
            self.batches_failed += 1
            if self._metrics.batches_failed is not None:
                self._metrics.batches_failed.inc()
            await self._partial_commit(batch, retry, stop)
            if self._watch is not None:
                self._watch.progressed()
            await _sleep_or_stop(stop, backoff)
            backoff = min(backoff * 2, self._options.backoff_max_s)

    async def _poll(self) -> dict[TopicPartition, list[Record]]:
        """Up to ``max_records``: one poll's records, then more for up to ``fill_wait_ms`` (see LoopOptions)."""
        opts = self._options
        batch: dict[TopicPartition, list[Record]] = await self._consumer.getmany(
            timeout_ms=opts.max_wait_ms, max_records=opts.max_records
        )
        count = sum(len(records) for records in batch.values())
        if not opts.fill_wait_ms or not count:
            return batch
        deadline = time.monotonic() + opts.fill_wait_ms / 1000
        while count < opts.max_records and (left_ms := int((deadline - time.monotonic()) * 1000)) > 0:
            more: dict[TopicPartition, list[Record]] = await self._consumer.getmany(
                timeout_ms=left_ms, max_records=opts.max_records - count
            )
            for tp, records in more.items():
                # A partition's records of successive polls follow each other: one list per partition.
                batch.setdefault(tp, []).extend(records)
                count += len(records)
        return batch

    async def _handle(self, records: list[Record], stop: asyncio.Event) -> list[RecordFailure] | None:
        """The handler's failures; None when stopping cancelled the batch."""
        task = asyncio.ensure_future(self._run_handler(records))
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                # Stopping: give the batch in flight its grace period to finish.
                try:
                    await asyncio.wait_for(asyncio.shield(task), self._options.grace_s)
                except TimeoutError:
                    log.warning(
                        "%s: batch of %d not drained in %.0f s; cancelled for redelivery",
                        self._name,
                        len(records),
                        self._options.grace_s,
                    )
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    return None
            return task.result()
        finally:
            stop_wait.cancel()

    async def _run_handler(self, records: list[Record]) -> list[RecordFailure]:
        try:
            return list(await self._handler(records))
        except Exception as exc:
            if classify(exc) is FailureClass.TRANSIENT or len(records) == 1:
                log.warning("%s: batch of %d failed (%s)", self._name, len(records), describe(exc, limit=300))
                return [RecordFailure(r, exc) for r in records]
        # A handler that let a non-transient error escape its batch: find the record to blame by
        # handling each alone, so the others are not held up by it.
        log.warning("%s: batch of %d failed; handling its records one by one", self._name, len(records))
        failures: list[RecordFailure] = []
        for record in records:
            try:
                failures.extend(await self._handler([record]))
            except Exception as exc:
                failures.append(RecordFailure(record, exc))
        return failures

    def _forget_succeeded(self, handled: list[Record], failures: list[RecordFailure]) -> None:
        """Drop the tries counted for records of ``handled`` that did not fail this time (a record that
        failed with an unknown error and then went through would otherwise be remembered until a revoke)."""
        if not self._attempts and not self._give_up_attempts:
            return
        failed = {record_id(f.record) for f in failures}
        for record in handled:
            rid = record_id(record)
            if rid not in failed:
                self._attempts.pop(rid, None)
                self._give_up_attempts.pop(rid, None)

    async def _settle(self, failures: list[RecordFailure]) -> list[Record]:
        """Give up on permanent failures; returns the records to retry."""
        retry: list[Record] = []
        for failure in failures:
            record, error = failure.record, failure.error
            rid = record_id(record)
            cls = classify(error)
            if self._metrics.records_failed is not None:
                self._metrics.records_failed.labels(topic=record.topic, failure_class=cls.value).inc()
            reason = describe(error)
            if cls is FailureClass.UNKNOWN:
                tries, waited, again = self._try_again(self._attempts, rid)
                if again:
                    log.warning("%s: %s@%d try %d failed: %s", self._name, record.topic, record.offset, tries, reason)
                    retry.append(record)
                    continue
                # The reason stays within what a job's error_message and a result's error hold (2,000).
                suffix = f" (unclassified error, given up after {tries} tries in {waited:.0f} s)"
                reason = clean_text(reason, limit=2000 - len(suffix)) + suffix
            if cls is FailureClass.TRANSIENT:
                retry.append(record)
                continue
            if not await self._give_up(record, error, reason):
                retry.append(record)
                continue
            self._attempts.pop(rid, None)
            self._give_up_attempts.pop(rid, None)
        return retry

    def _try_again(self, attempts: dict[RecordId, tuple[int, float]], rid: RecordId) -> tuple[int, float, bool]:
        """Count a try of ``rid`` that failed with an unknown error: the tries, the seconds since the first,
        and whether it gets another (fewer than max_record_attempts, or less than min_unknown_retry_s)."""
        tries, first = attempts.get(rid, (0, time.monotonic()))
        tries += 1
        attempts[rid] = (tries, first)
        waited = time.monotonic() - first
        again = tries < self._options.max_record_attempts or waited < self._options.min_unknown_retry_s
        return tries, waited, again

    async def _give_up(self, record: Record, error: BaseException, reason: str) -> bool:
        """The handler's give_up, its own failure classified; False: retry the record (with the backoff).

        Transient (the producer or the database is down): retried until it ends. Unknown: retried like any
        unknown error, then as permanent. Permanent (handlers already fall back to a dead letter, and
        DeadLetters.send to a minimal one, so only a bug lands here): the record is skipped, logged as an
        error, because retrying can only hold its partition back for good."""
        try:
            await self._handler.give_up(record, error, reason)
        except Exception as exc:
            where = f"{record.topic}[{record.partition}]@{record.offset}"
            cls = classify(exc)
            if cls is FailureClass.TRANSIENT:
                log.warning("%s: could not give up on %s: %s", self._name, where, describe(exc, limit=300))
                return False
            if cls is FailureClass.UNKNOWN:
                tries, _, again = self._try_again(self._give_up_attempts, record_id(record))
                if again:
                    log.warning(
                        "%s: could not give up on %s (try %d): %s", self._name, where, tries, describe(exc, limit=300)
                    )
                    return False
            log.error(
                "%s: skipped %s, which could not be given up on (%s): %s; it was given up for: %s",
                self._name,
                where,
                cls.value,
                describe(exc, limit=500),
                reason[:500],
            )
        return True

    async def _partial_commit(
        self, batch: dict[TopicPartition, list[Record]], retry: list[Record], stop: asyncio.Event
    ) -> None:
        first_retry: dict[TopicPartition, int] = {}
        for record in retry:
            tp = TopicPartition(record.topic, record.partition)
            first_retry[tp] = min(first_retry.get(tp, record.offset), record.offset)
        offsets: dict[TopicPartition, int] = {}
        for tp, recs in batch.items():
            if not recs:
                continue
            if tp not in first_retry:
                offsets[tp] = recs[-1].offset + 1
                continue
            offsets[tp] = first_retry[tp]
            retrying = {r.offset for r in retry if r.partition == tp.partition and r.topic == tp.topic}
            self._done[tp] |= {r.offset for r in recs if r.offset > first_retry[tp] and r.offset not in retrying}
        await self._commit({tp: o for tp, o in offsets.items() if o > batch[tp][0].offset}, stop)
        self._rewind(first_retry)

    async def _commit(self, offsets: dict[TopicPartition, int], stop: asyncio.Event) -> None:
        if not offsets:
            return
        for tp, offset in offsets.items():  # what is committed will not come again: forget it
            kept = {o for o in self._done.get(tp, ()) if o >= offset}
            if kept:
                self._done[tp] = kept
            else:
                self._done.pop(tp, None)
        try:
            await _within(self._consumer.commit(offsets), stop, self._commit_timeout_s, _COMMIT_ON_STOP_S)
        except (CommitFailedError, KafkaError, TimeoutError) as exc:
            # A rebalance took the partitions away, or the broker is out of reach: a later commit covers these
            # records, or whoever holds the partition next re-reads them from the last commit and the
            # idempotent handlers make the repeat harmless.
            why = exc if str(exc) else type(exc).__name__
            log.warning("%s: commit failed (%s); records may be redelivered", self._name, why)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Forget succeeded offsets and tries of partitions this consumer no longer owns (a rebalance, or a
        topic re-created with reused offsets would otherwise skip records that never succeeded)."""
        for tp in partitions:
            self._done.pop(tp, None)
            for attempts in (self._attempts, self._give_up_attempts):
                for rid in [r for r in attempts if r[0] == tp.topic and r[1] == tp.partition]:
                    del attempts[rid]
            self._retrying = {r for r in self._retrying if r[0] != tp.topic or r[1] != tp.partition}

    def _rewind(self, positions: dict[TopicPartition, int]) -> None:
        for tp, offset in positions.items():
            try:
                self._consumer.seek(tp, offset)
            except (KafkaError, AssertionError, ValueError) as exc:  # partition revoked meanwhile
                log.info("%s: cannot rewind %s: %s", self._name, tp, exc)
                self.forget([tp])


class _ForgetRevoked(ConsumerRebalanceListener):  # type: ignore[misc]
    """Drops a loop's memory of partitions taken away: their next owner starts from the committed offset.
    Tells the watch and the lag gauges what this consumer holds."""

    def __init__(self, *, group: str, topic: str, watch: ConsumerWatch | None, metrics: LoopMetrics | None) -> None:
        self.loop: ConsumeLoop | None = None
        self._group = group
        self._topic = topic
        self._watch = watch
        self._metrics = metrics or LoopMetrics()

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        if self.loop is not None:
            self.loop.forget(revoked)
        if self._watch is not None:
            self._watch.on_revoked(revoked)
        if self._metrics.lag is not None:
            for tp in revoked:  # its new owner reports it; a stale figure here would count it twice
                with contextlib.suppress(KeyError):
                    self._metrics.lag.remove(self._group, tp.topic, str(tp.partition))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if self._watch is not None:
            self._watch.on_assigned(assigned)
        if self._metrics.partitions is not None:
            self._metrics.partitions.labels(group=self._group, topic=self._topic).set(len(assigned))


async def report_lag(
    consumer: AIOKafkaConsumer, *, group: str, lag: Gauge, interval_s: float, stop: asyncio.Event
) -> None:
    """Every ``interval_s``: per partition held, the end offset minus the group's committed offset.

    Read from the broker (ListOffsets, OffsetFetch) rather than from the loop, so a loop that is stuck in a
    batch shows its lag growing. A partition never committed counts from its first offset. Where the broker
    misreports end offsets (Tansu, docs/test-servers.md) the figure is low, never negative.
    """
    while not stop.is_set():
        try:
            await asyncio.wait_for(_read_lag(consumer, group=group, lag=lag), max(1.0, interval_s))
        except (KafkaError, AssertionError, ValueError, TimeoutError) as exc:
            log.debug("%s: lag not read: %s", group, exc)
        await _sleep_or_stop(stop, interval_s)


async def _read_lag(consumer: AIOKafkaConsumer, *, group: str, lag: Gauge) -> None:
    held = sorted(consumer.assignment(), key=lambda tp: (tp.topic, tp.partition))
    if not held:
        return
    ends = await consumer.end_offsets(held)
    starts: dict[TopicPartition, int] | None = None
    for tp in held:
        committed = await consumer.committed(tp)
        if committed is None or committed < 0:
            if starts is None:
                starts = await consumer.beginning_offsets(held)
            committed = starts.get(tp, 0)
        if tp in consumer.assignment():  # not revoked meanwhile
            behind = max(0, ends.get(tp, committed) - committed)
            lag.labels(group=group, topic=tp.topic, partition=str(tp.partition)).set(behind)


async def _within(work: Awaitable[T], stop: asyncio.Event, timeout_s: float, once_stopped_s: float) -> T:
    """``work``'s result within ``timeout_s``, and within ``once_stopped_s`` once ``stop`` is set (even before
    it began); TimeoutError, with ``work`` cancelled, when it took longer."""
    task = asyncio.ensure_future(work)
    stop_wait = asyncio.ensure_future(stop.wait())
    started = time.monotonic()
    try:
        await asyncio.wait({task, stop_wait}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if not task.done() and stop.is_set():
            left = timeout_s - (time.monotonic() - started)
            await asyncio.wait({task}, timeout=max(0.0, min(left, once_stopped_s)))
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise TimeoutError(f"no answer in {time.monotonic() - started:.1f} s")
        return task.result()
    finally:
        stop_wait.cancel()
        task.cancel()  # only where this wait was itself cancelled: the commit would otherwise run on


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return


async def consume_topic(
    kafka: KafkaSettings,
    *,
    topic: str,
    group_id: str,
    client_id: str,
    handler: BatchHandler,
    options: LoopOptions,
    metrics: LoopMetrics | None,
    stop: asyncio.Event,
    watch: ConsumerWatch | None = None,
) -> None:
    """Join ``group_id`` on ``topic`` and run the consume loop until ``stop``; the consumer is closed last.

    ``watch`` (from ``Health.consumer``) hears of the assignment and of every poll; with ``metrics.lag``
    the lag of the partitions held is reported beside the loop."""
    listener = _ForgetRevoked(group=group_id, topic=topic, watch=watch, metrics=metrics)
    async with open_consumer(
        kafka,
        topics=[topic],
        group_id=group_id,
        client_id=client_id,
        max_poll_records=options.max_records,
        listener=listener,
    ) as consumer:
        loop = ConsumeLoop(
            consumer,
            handler,
            name=client_id,
            options=options,
            # One request's time: aiokafka sends a commit once, and a broker that is up answers within it.
            commit_timeout_s=group_request_timeout_ms(kafka) / 1000,
            metrics=metrics,
            watch=watch,
        )
        listener.loop = loop
        lag_task = None
        if metrics is not None and metrics.lag is not None:
            lag_task = asyncio.create_task(
                report_lag(consumer, group=group_id, lag=metrics.lag, interval_s=options.lag_interval_s, stop=stop),
                name=f"{client_id}-lag",
            )
        try:
            await loop.run(stop)
        finally:
            if lag_task is not None:
                lag_task.cancel()
                await asyncio.gather(lag_task, return_exceptions=True)
