"""Result events at the contract's limits, for tests of what topics and dead letters must hold."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from shared.contracts.events import MAX_INLINE_MASK_BYTES, ResultEvent, ResultKind


def largest_inline_result(*, error: str | None = None) -> ResultEvent:
    """A completed result with its mask inline at MAX_INLINE_MASK_BYTES and every other field at its
    longest: the largest record the results topic takes (about 700 KB as JSON)."""
    now = datetime.now(UTC)
    return ResultEvent(
        kind=ResultKind.COMPLETED,
        job_id=uuid.uuid4(),
        created_at=now,
        occurred_at=now,
        model_name="m" * 200,
        model_revision="r" * 64,
        mask_png=b"\xff" * MAX_INLINE_MASK_BYTES,
        inference_ms=2**31,
        error=error,
    )
