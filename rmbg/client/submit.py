"""Submitting many files at once: bounded uploads, optional following of each job, one outcome per file."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmbg.client.api import ApiClient, Job
from rmbg.client.errors import ClientError
from rmbg.client.follow import follow
from rmbg.client.inputs import content_type, idempotency_key


@dataclass(frozen=True)
class SubmitOptions:
    tags: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    callback_url: str | None = None
    wait: bool = False
    # Uploads at once: each holds a file in memory and a connection, and the API sheds load past its cap.
    concurrency: int = 4
    # Longest wait for one job to end once accepted (--wait only).
    timeout_s: float = 600.0


@dataclass
class Outcome:
    """What became of one file; ``error`` says why it did not end well (refused, failed, timed out)."""

    path: Path
    job_id: str | None = None
    status: str = "queued"
    created: bool | None = None
    job: Job | None = None
    error: str | None = None
    seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status != "failed"

    def as_json(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "job_id": self.job_id,
            "status": self.status,
            "ok": self.ok,
            "created": self.created,
            "seconds": None if self.seconds is None else round(self.seconds, 3),
            "error": self.error,
            "job": self.job,
        }


Listener = Callable[[Outcome, bool], None]


def _followers(concurrency: int) -> int:
    # Following is a stream or a poll per job, far cheaper than an upload; more jobs in flight let the
    # pipeline batch, but not so many that thousands of files poll at once.
    return max(16, 4 * concurrency)


async def submit_all(
    api: ApiClient, paths: list[Path], opts: SubmitOptions, on_update: Listener | None = None
) -> list[Outcome]:
    """Every file submitted (and followed with ``opts.wait``); ``on_update(outcome, finished)`` is told
    of each change. Never raises for one file's trouble: it is that file's outcome."""
    outcomes = [Outcome(path=p) for p in paths]
    uploads = asyncio.Semaphore(max(opts.concurrency, 1))
    followers = asyncio.Semaphore(_followers(opts.concurrency))

    def tell(outcome: Outcome, finished: bool = False) -> None:
        if on_update is not None:
            on_update(outcome, finished)

    async def one(outcome: Outcome) -> None:
        started = time.monotonic()
        try:
            async with uploads:
                outcome.status = "uploading"
                tell(outcome)
                await _submit(api, outcome, opts)
            tell(outcome)
            if opts.wait:
                async with followers:
                    await _follow(api, outcome, opts, tell)
        finally:
            outcome.seconds = time.monotonic() - started
            tell(outcome, True)

    await asyncio.gather(*(one(o) for o in outcomes))
    return outcomes


async def _submit(api: ApiClient, outcome: Outcome, opts: SubmitOptions) -> None:
    try:
        data = await asyncio.to_thread(outcome.path.read_bytes)
    except OSError as exc:
        outcome.status, outcome.error = "not sent", f"cannot read the file: {exc.strerror or exc}"
        return
    try:
        accepted = await api.submit(
            filename=outcome.path.name,
            data=data,
            content_type=content_type(outcome.path),
            tags=opts.tags,
            params=opts.params,
            callback_url=opts.callback_url,
            idempotency_key=idempotency_key(data, params=opts.params, tags=opts.tags, callback_url=opts.callback_url),
        )
    except ClientError as exc:
        outcome.status = "refused" if exc.status is not None else "not sent"
        outcome.error = exc.message
        return
    outcome.job_id, outcome.status, outcome.created = accepted.job_id, accepted.status, accepted.created


async def _follow(api: ApiClient, outcome: Outcome, opts: SubmitOptions, tell: Callable[[Outcome], None]) -> None:
    if outcome.job_id is None:
        return

    def changed(job: Job) -> None:
        outcome.job, outcome.status = job, str(job.get("status"))
        tell(outcome)

    try:
        async with asyncio.timeout(opts.timeout_s):
            job = await follow(api, outcome.job_id, on_change=changed)
    except TimeoutError:
        outcome.error = (
            f"still {outcome.status} after {opts.timeout_s:g} s (follow it with `rmbg job {outcome.job_id}`)"
        )
        return
    except ClientError as exc:
        outcome.error = exc.message
        return
    outcome.job, outcome.status = job, str(job.get("status"))
    if outcome.status == "failed":
        outcome.error = str(job.get("error_message") or "the job failed without a reason")
