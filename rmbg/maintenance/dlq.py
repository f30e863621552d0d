"""Dead letters an operator can act on: list them with their reasons, and replay chosen ones.

A dead letter (shared/contracts/events.py ``DeadLetter``) holds the offending record whole (up to
``MAX_DEAD_LETTER_PAYLOAD``, about 720 KiB, as far as the topic's limit allows: a result with its mask
inline fits), its source topic, partition and offset, the service that gave up, the reason and its
failure class. ``replay`` sends the record back to its source topic with its original key (cut to 256
characters), for after the cause was fixed (a bucket allowed, an object restored, a bug deployed away).
Consumers are idempotent, so replaying a letter whose record meanwhile succeeded changes nothing.

The topic is read to its end without trusting the broker's end offsets (the broker used here misreports
them, see README): reading stops once the topic has been quiet for ``idle_s``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer

from shared.config import KafkaSettings
from shared.contracts import DeadLetter, Topics
from shared.exceptions import ContractError, RmbgError
from shared.messaging import open_producer
from shared.worker import Record

log = logging.getLogger(__name__)


class ReplayRefused(RmbgError):
    """A chosen dead letter cannot be replayed (not found, or its record was truncated)."""


@dataclass(frozen=True)
class StoredLetter:
    """A dead letter and where it sits in the dead-letter topic (``partition:offset`` names it)."""

    partition: int
    offset: int
    letter: DeadLetter

    @property
    def ref(self) -> str:
        return f"{self.partition}:{self.offset}"

    def age_s(self, now: datetime) -> float:
        return max(0.0, (now - self.letter.failed_at).total_seconds())


async def read_dead_letters(
    kafka: KafkaSettings, topics: Topics, *, source: str | None = None, idle_s: float = 1.5, max_s: float = 60.0
) -> list[StoredLetter]:
    """Every dead letter (optionally only those from ``source``), oldest first per partition."""
    consumer = AIOKafkaConsumer(
        topics.dead_letter.name,
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=f"{kafka.client_id}-dlq",
        # A throw-away group nobody commits for: reading changes no one's position.
        group_id=f"rmbg-dlq-reader-{secrets.token_hex(4)}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=kafka.fetch_max_wait_ms,
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=kafka.heartbeat_interval_ms,
        max_partition_fetch_bytes=kafka.max_message_bytes + 64 * 1024,
    )
    await consumer.start()
    letters: list[StoredLetter] = []
    try:
        loop_started = datetime.now(UTC)
        quiet_since: datetime | None = None
        while (datetime.now(UTC) - loop_started).total_seconds() < max_s:
            batch = await consumer.getmany(timeout_ms=250, max_records=500)
            records = [r for recs in batch.values() for r in recs]
            now = datetime.now(UTC)
            if records:
                quiet_since = None
            elif consumer.assignment():
                quiet_since = quiet_since or now
                if (now - quiet_since).total_seconds() >= idle_s:
                    break
            letters.extend(_parse(records, topics))
        else:
            # Stopped by the time limit, not by reaching the end: later letters are not in the list, and
            # `dlq replay` refuses their references as unknown.
            log.warning("read dead letters for %g s without reaching the end: the list is incomplete", max_s)
    finally:
        await consumer.stop()
    if source is not None:
        letters = [s for s in letters if s.letter.source_topic == source]
    return sorted(letters, key=lambda s: (s.letter.failed_at, s.partition, s.offset))


def _parse(records: Iterable[Record], topics: Topics) -> list[StoredLetter]:
    parsed: list[StoredLetter] = []
    for record in records:
        try:
            letter = topics.dead_letter.deserialize(record.value)
        except ContractError:
            continue  # not a dead letter of ours: nothing to list or replay
        parsed.append(StoredLetter(record.partition, record.offset, letter))
    return parsed


async def replay(
    kafka: KafkaSettings, topics: Topics, letters: list[StoredLetter], refs: Collection[str]
) -> list[StoredLetter]:
    """Send the records of the letters named by ``refs`` (``partition:offset``) back to their source topics."""
    by_ref = {s.ref: s for s in letters}
    missing = sorted(set(refs) - set(by_ref))
    if missing:
        raise ReplayRefused(f"no dead letter {', '.join(missing)} (see `rmbg dlq list`)")
    chosen = [by_ref[r] for r in dict.fromkeys(refs)]  # a letter named twice is still sent once
    truncated = [s.ref for s in chosen if s.letter.payload_truncated]
    if truncated:
        raise ReplayRefused(f"dead letters {', '.join(truncated)} hold only part of their record, or none")
    async with open_producer(kafka, client_id="dlq-replay") as producer:
        for stored in chosen:
            letter = stored.letter
            await producer.send_and_wait(
                letter.source_topic, letter.payload, key=letter.key.encode() if letter.key is not None else None
            )
    return chosen
