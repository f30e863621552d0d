"""DeadLetters.send sizes each letter to its topic's limit and always ends: a producer that records what it is
given stands in for the broker (the sizing does no I/O; test_messaging.py sends letters to the real one)."""

from __future__ import annotations

from typing import Any, cast

import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from shared.config import KafkaSettings, TopicSettings
from shared.contracts import DeadLetter, Topic, Topics
from shared.contracts.events import (
    MAX_DEAD_LETTER_KEY,
    MAX_DEAD_LETTER_PAYLOAD,
    MAX_MINIMAL_DEAD_LETTER_REASON,
)
from shared.messaging import DeadLetters
from shared.telemetry import PipelineMetrics
from tests.support.results import largest_inline_result

TOPICS = Topics.from_settings(TopicSettings(), KafkaSettings())


class _Producer:
    """Keeps what is sent; ``refuse`` makes the next sends raise, as the broker would."""

    def __init__(self, refuse: list[Exception] | None = None) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []
        self._refuse = refuse or []

    async def send_and_wait(self, topic: str, value: bytes, *, key: bytes | None = None, **_: Any) -> None:
        if self._refuse:
            raise self._refuse.pop(0)
        self.sent.append((topic, value, key))


def _record(value: bytes, key: bytes | None = b"k") -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="rmbg.results",
        partition=3,
        offset=41,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value),
        headers=(),
    )


def _letters(producer: _Producer, limit: int = KafkaSettings().max_message_bytes) -> DeadLetters:
    topic = Topic(TOPICS.dead_letter.name, DeadLetter, limit)
    return DeadLetters(cast(AIOKafkaProducer, producer), topic, "persister", PipelineMetrics.create().dead_letters)


def _sent(producer: _Producer, limit: int = KafkaSettings().max_message_bytes) -> DeadLetter:
    assert len(producer.sent) == 1
    _, value, _ = producer.sent[0]
    assert len(value) <= limit
    return Topic(TOPICS.dead_letter.name, DeadLetter, limit).deserialize(value)


def _largest_inline_result() -> bytes:
    return TOPICS.results.serialize(largest_inline_result())


async def test_the_largest_inline_mask_result_is_kept_whole_for_replay() -> None:
    """About 700 KB, 933 KB as base64: it fits a 1,000,000-byte letter, so it is not cut (replay refuses cut ones)."""
    value = _largest_inline_result()
    assert len(value) > 690_000
    producer = _Producer()
    await _letters(producer).send(_record(value), "x" * 4000)
    letter = _sent(producer)
    assert letter.payload == value and not letter.payload_truncated


@pytest.mark.parametrize("limit", [10_000, 50_000, 1_000_000, 1_048_576])
async def test_a_letter_is_sized_to_its_topic(limit: int) -> None:
    """KafkaSettings.max_message_bytes ranges over 10,000 to 1 MiB: the letter keeps what fits, and fits."""
    value = b"\x00" * 900_000
    producer = _Producer()
    await _letters(producer, limit).send(_record(value), "malformed ResultEvent: " + "é" * 3000)
    letter = _sent(producer, limit)
    assert letter.payload_truncated and value.startswith(letter.payload)
    # All that fits, to a base64 group, or as much as a letter ever holds.
    full = len(TOPICS.dead_letter.serialize(letter)) > limit - 8
    assert full or len(letter.payload) == MAX_DEAD_LETTER_PAYLOAD


async def test_a_huge_key_is_cut_to_a_bounded_size() -> None:
    """Invalid UTF-8 grows threefold as U+FFFD: a 400 KB key would have made the letter too large."""
    producer = _Producer()
    await _letters(producer).send(_record(b"{}", key=b"\xff" * 400_000), "malformed")
    letter = _sent(producer)
    assert letter.key == "\ufffd" * MAX_DEAD_LETTER_KEY
    assert letter.payload == b"{}" and not letter.payload_truncated
    assert producer.sent[0][2] == letter.key.encode(), "the letter's key is its record's key"


async def test_a_letter_that_cannot_fit_becomes_a_minimal_one() -> None:
    """A reason of 4,000 four-byte characters (16 KB) cannot fit the smallest limit, 10,000 bytes, even with
    no payload: the position and the start of the reason still get there, and the record ends."""
    producer = _Producer()
    await _letters(producer, 10_000).send(_record(b"x" * 5000), "\U0001d11e" * 4000, error=RuntimeError("?"))
    letter = _sent(producer, 10_000)
    assert (letter.source_topic, letter.partition, letter.offset) == ("rmbg.results", 3, 41)
    assert letter.payload == b"" and letter.payload_truncated
    assert letter.failure_class == "unknown" and letter.key == "k"
    assert letter.reason.startswith("record not kept (DeadLetter of ") and "\U0001d11e" in letter.reason
    assert len(letter.reason) <= MAX_MINIMAL_DEAD_LETTER_REASON


async def test_a_letter_the_broker_refuses_becomes_a_minimal_one() -> None:
    """A topic whose max.message.bytes is below KafkaSettings': the broker's refusal is permanent."""
    producer = _Producer(refuse=[MessageSizeTooLargeError()])
    await _letters(producer).send(_record(b"x" * 500_000), "too big for the broker")
    letter = _sent(producer)
    assert letter.payload == b"" and letter.payload_truncated
    assert letter.reason.startswith("record not kept (MessageSizeTooLargeError") and "too big" in letter.reason


async def test_an_outage_propagates_for_the_loop_to_retry() -> None:
    producer = _Producer(refuse=[KafkaConnectionError()])
    with pytest.raises(KafkaConnectionError):
        await _letters(producer).send(_record(b"{}"), "malformed")
    assert producer.sent == []
