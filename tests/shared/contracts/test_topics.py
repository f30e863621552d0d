"""Contracts: versioned, validated at the edge, never larger than a Kafka message may be."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from shared.config import KafkaSettings, TopicSettings
from shared.contracts import ResultEvent, ResultKind, Topics, UploadEvent
from shared.contracts.events import MAX_INLINE_MASK_BYTES
from shared.exceptions import ContractError
from shared.ids import uuid7, uuid7_time

TOPICS = Topics.from_settings(TopicSettings(), KafkaSettings())
NOW = datetime.now(UTC)


def test_round_trip_carries_the_schema_version() -> None:
    event = UploadEvent(event_id="e1", user_id="shop-1", key="a/b.jpg", occurred_at=NOW, tags=["Shoes "])
    data = TOPICS.uploads.serialize(event)
    assert b'"schema_version":1' in data
    back = TOPICS.uploads.deserialize(data)
    assert back == event and back.tags == ["shoes"]


_GOOD = {"schema_version": 1, "event_id": "e", "user_id": "u", "key": "k", "occurred_at": "2026-01-01T00:00:00Z"}


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        json.dumps({**_GOOD, "schema_version": 2}).encode(),
        json.dumps({**_GOOD, "occurred_at": "2026-01-01T00:00:00"}).encode(),  # no time zone
        json.dumps({**_GOOD, "user_id": "bad user!"}).encode(),
        json.dumps({**_GOOD, "x": 1}).encode(),  # unknown field
        json.dumps({k: v for k, v in _GOOD.items() if k != "key"}).encode(),
        None,
    ],
)
def test_malformed_records_raise_contract_errors(payload: bytes | None) -> None:
    TOPICS.uploads.deserialize(json.dumps(_GOOD).encode())  # the base record itself is valid
    with pytest.raises(ContractError):
        TOPICS.uploads.deserialize(payload)


def test_oversized_record_is_refused_before_parsing() -> None:
    with pytest.raises(ContractError, match="exceeds"):
        TOPICS.uploads.deserialize(b"x" * 1_000_001)


def test_largest_inline_mask_still_fits_a_kafka_message() -> None:
    result = ResultEvent(
        kind=ResultKind.COMPLETED,
        job_id=uuid.uuid4(),
        created_at=NOW,
        occurred_at=NOW,
        model_name="m",
        mask_png=b"\x00" * MAX_INLINE_MASK_BYTES,
    )
    assert len(TOPICS.results.serialize(result)) < 1_000_000
    with pytest.raises(ValueError):
        ResultEvent(
            kind=ResultKind.COMPLETED,
            job_id=uuid.uuid4(),
            created_at=NOW,
            occurred_at=NOW,
            model_name="m",
            mask_png=b"\x00" * (MAX_INLINE_MASK_BYTES + 1),
        )


def test_completed_result_names_its_model_and_one_mask() -> None:
    with pytest.raises(ValueError):
        ResultEvent(kind=ResultKind.COMPLETED, job_id=uuid.uuid4(), created_at=NOW, occurred_at=NOW, mask_png=b"x")
    with pytest.raises(ValueError):
        ResultEvent(
            kind=ResultKind.COMPLETED,
            job_id=uuid.uuid4(),
            created_at=NOW,
            occurred_at=NOW,
            model_name="m",
            mask_png=b"x",
            mask_key="k",
        )


def test_uuid7_is_time_ordered_and_deterministic_with_entropy() -> None:
    a, b = uuid7(NOW), uuid7(NOW, entropy=b"event-1")
    assert a.version == b.version == 7
    assert abs((uuid7_time(a) - NOW).total_seconds()) < 0.001
    assert uuid7(NOW, entropy=b"event-1") == b != uuid7(NOW, entropy=b"event-2")
    assert uuid7(datetime(2020, 1, 1, tzinfo=UTC)) < uuid7(datetime(2021, 1, 1, tzinfo=UTC))
