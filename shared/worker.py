"""The consume loop every Kafka-driven service runs.

- A batch is handed to the service's handler; offsets are committed only after the handler returns,
  i.e. after its side effects (PostgreSQL rows, S3 objects, produced records) are durable.
- A handler error that is not about one record (a dead dependency) leaves the offsets uncommitted and
  rewinds to them, so the batch is delivered again after a backoff: nothing is lost.
- SIGTERM only sets the stop event; the batch in flight drains within ``grace_s`` and is then
  cancelled, uncommitted, for redelivery (every handler is idempotent).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from prometheus_client import Counter

from shared.config import KafkaSettings
from shared.messaging import open_consumer

log = logging.getLogger(__name__)

BatchHandler = Callable[[list[ConsumerRecord[bytes, bytes]]], Awaitable[None]]


@dataclass(frozen=True)
class LoopOptions:
    max_records: int = 100
    max_wait_ms: int = 200
    grace_s: float = 30.0
    # Backoff after a failed batch: 0.5 s doubling to 30 s, so a dead database is not hammered.
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0


class ConsumeLoop:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        handler: BatchHandler,
        *,
        name: str,
        options: LoopOptions,
        failed_batches: Counter | None = None,
    ) -> None:
        self._consumer = consumer
        self._handler = handler
        self._name = name
        self._options = options
        self.batches_failed = 0
        self._failed_metric = failed_batches

    async def run(self, stop: asyncio.Event) -> None:
        backoff = self._options.backoff_initial_s
        while not stop.is_set():
            batch = await self._consumer.getmany(
                timeout_ms=self._options.max_wait_ms, max_records=self._options.max_records
            )
            records = [r for part in batch.values() for r in part]
            if not records:
                continue
            ok = await self._handle(records, stop)
            if ok:
                await self._commit(batch)
                backoff = self._options.backoff_initial_s
            else:
                self.batches_failed += 1
                if self._failed_metric is not None:
                    self._failed_metric.inc()
                self._rewind(batch)
                await _sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, self._options.backoff_max_s)

    async def _handle(self, records: list[ConsumerRecord[bytes, bytes]], stop: asyncio.Event) -> bool:
        task = asyncio.ensure_future(self._handler(records))
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
                    return False
            task.result()
            return True
        except Exception:
            log.exception("%s: batch of %d records failed; will retry", self._name, len(records))
            return False
        finally:
            stop_wait.cancel()

    async def _commit(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        offsets = {tp: recs[-1].offset + 1 for tp, recs in batch.items() if recs}
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions away: their new owner re-reads from the last commit and the
            # idempotent handlers make the repeat harmless.
            log.warning("%s: commit failed (%s); records may be redelivered", self._name, exc)

    def _rewind(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        for tp, recs in batch.items():
            if recs:
                try:
                    self._consumer.seek(tp, recs[0].offset)
                except (KafkaError, AssertionError, ValueError) as exc:  # partition revoked meanwhile
                    log.info("%s: cannot rewind %s: %s", self._name, tp, exc)


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
    failed_batches: Counter | None,
    stop: asyncio.Event,
) -> None:
    """Join ``group_id`` on ``topic`` and run the consume loop until ``stop``; the consumer is closed last."""
    async with open_consumer(
        kafka, topics=[topic], group_id=group_id, client_id=client_id, max_poll_records=options.max_records
    ) as consumer:
        loop = ConsumeLoop(consumer, handler, name=client_id, options=options, failed_batches=failed_batches)
        await loop.run(stop)
