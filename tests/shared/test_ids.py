"""UUIDv7 job ids (shared/ids.py): time-ordered, and only for moments their 48-bit field holds."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.ids import uuid7, uuid7_time


@pytest.mark.parametrize(
    "at", [datetime(1970, 1, 1, tzinfo=UTC), datetime(2026, 12, 6, 12, 30, 1, 250_000, tzinfo=UTC)]
)
def test_an_id_reads_back_its_moment(at: datetime) -> None:
    assert uuid7_time(uuid7(at)) == at


@pytest.mark.parametrize(
    "at", [datetime(1, 1, 1, tzinfo=UTC), datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)]
)
def test_a_moment_the_id_cannot_hold_is_refused(at: datetime) -> None:
    # Wrapped around, year 1 became an id of year 8920 and 1969 one that no datetime can read back.
    with pytest.raises(ValueError, match="UUIDv7 holds"):
        uuid7(at)
