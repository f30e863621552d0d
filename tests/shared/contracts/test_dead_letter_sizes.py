"""The dead letter's size rules: base64 arithmetic, and a cap that keeps every valid result whole at the
default message limit."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

from shared.config import KafkaSettings, TopicSettings
from shared.contracts import DeadLetter, Topics
from shared.contracts.events import MAX_DEAD_LETTER_PAYLOAD, dead_letter_payload_room
from tests.support.results import largest_inline_result

TOPICS = Topics.from_settings(TopicSettings(), KafkaSettings())
NOW = datetime.now(UTC)


def test_payload_room_is_what_base64_fits_in_the_spare_bytes() -> None:
    for spare in [*range(-4, 64), 999_999, 1_000_000]:
        room = dead_letter_payload_room(spare)
        assert len(base64.b64encode(b"\0" * room)) <= max(spare, 0)
        assert len(base64.b64encode(b"\0" * (room + 1))) > spare, "not a byte less than fits"


def test_the_cap_is_sized_from_the_default_message_limit() -> None:
    # events.py cannot read shared.config's default; this is where the two are held together.
    assert MAX_DEAD_LETTER_PAYLOAD == dead_letter_payload_room(KafkaSettings().max_message_bytes - 16 * 1024)


def test_the_largest_inline_mask_result_fits_whole_in_a_dead_letter() -> None:
    """A result with its mask inline is up to about 700 KB: a letter holds it whole, so it can be replayed,
    and that letter with a reason at its longest still fits the default message limit."""
    result = largest_inline_result(error="e" * 2000)
    record = TOPICS.results.serialize(result)
    assert len(record) <= MAX_DEAD_LETTER_PAYLOAD
    letter = DeadLetter(
        source_topic=TopicSettings().results,
        partition=2**31 - 1,
        offset=2**63 - 1,
        key=str(uuid.uuid4()),
        reason="x" * 4000,
        failure_class="unknown",
        service="persister",
        failed_at=NOW,
        payload=record,
    )
    assert len(TOPICS.dead_letter.serialize(letter)) <= KafkaSettings().max_message_bytes
