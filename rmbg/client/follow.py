"""Following a job to its end: the API's event stream when it has one, polling every half second else."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from rmbg.client.api import TERMINAL, ApiClient, EventsUnavailable, Job

POLL_INTERVAL_S = 0.5


async def follow(
    api: ApiClient,
    job_id: str,
    *,
    on_change: Callable[[Job], None] | None = None,
    poll_interval_s: float = POLL_INTERVAL_S,
) -> Job:
    """The job in a terminal state; ``on_change`` sees each new status on the way.

    The stream is tried first (no request per half second per job); a stream that is missing, refused or
    cut short leaves the rest to polling, which also reports a job that vanished as the API's 404."""
    last: Job | None = None

    def seen(job: Job) -> None:
        nonlocal last
        if on_change is not None and (last is None or last.get("status") != job.get("status")):
            on_change(job)
        last = job

    with contextlib.suppress(EventsUnavailable):
        async with contextlib.aclosing(api.events(job_id)) as events:
            async for job in events:
                seen(job)
                if job.get("status") in TERMINAL:
                    # An event may carry a slimmer view than the resource; the summary wants all of it.
                    return await api.job(job_id)
    while True:
        job = await api.job(job_id)
        seen(job)
        if job.get("status") in TERMINAL:
            return job
        await asyncio.sleep(poll_interval_s)
