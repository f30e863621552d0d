"""The demo of `rmbg up --demo`: bundled sample photos through the whole pipeline.

Photos come from scikit-image's bundled data (no download): four go through the HTTP endpoint and one
through the upload topic, as an upstream system would send it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from rmbg.keyring import KeyRing
from shared.config import BaseServiceSettings
from shared.contracts import ProcessingParams, Topics, UploadEvent
from shared.db.models import TERMINAL_STATUSES
from shared.messaging import open_producer, publish
from shared.storage import open_object_store

SAMPLES = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png")
TERMINAL = {str(s) for s in TERMINAL_STATUSES}


def sample_bytes(name: str) -> bytes:
    return resources.files("skimage.data").joinpath(name).read_bytes()


async def submit_http(client: httpx.AsyncClient, name: str, *, tags: str) -> str:
    """Submit one sample as the user the client's key belongs to."""
    resp = await client.post(
        "/v1/jobs",
        files={"image": (name, sample_bytes(name), "application/octet-stream")},
        data={"tags": tags, "params": json.dumps({"threshold": None})},
    )
    resp.raise_for_status()
    job_id: str = resp.json()["job_id"]
    return job_id


async def submit_upload_event(settings: BaseServiceSettings, name: str, *, user_id: str) -> str:
    """Put the photo where an upstream system would, then publish its upload event."""
    from shared.ids import upload_job_id

    key = f"uploads/demo/{uuid.uuid4()}/{name}"
    async with open_object_store(settings.s3) as store:
        await store.put(key, sample_bytes(name), content_type="image/png")
    event = UploadEvent(
        event_id=f"demo-{uuid.uuid4()}",
        user_id=user_id,
        key=key,
        tags=["demo", "upstream"],
        params=ProcessingParams(),
        occurred_at=datetime.now(UTC),
    )
    topics = Topics.from_settings(settings.topics, settings.kafka)
    async with open_producer(settings.kafka, client_id="demo") as producer:
        await publish(producer, topics.uploads, event, key=event.event_id)
    return str(upload_job_id(event.event_id, event.occurred_at))


async def wait_terminal(client: httpx.AsyncClient, job_ids: list[str], *, timeout_s: float) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    jobs: dict[str, dict[str, Any]] = {}
    while loop.time() < deadline:
        for job_id in job_ids:
            if jobs.get(job_id, {}).get("status") in TERMINAL:
                continue
            resp = await client.get(f"/v1/jobs/{job_id}")
            if resp.status_code == 200:
                jobs[job_id] = resp.json()
        if len(jobs) == len(job_ids) and all(j["status"] in TERMINAL for j in jobs.values()):
            break
        await asyncio.sleep(0.5)
    return [jobs.get(j, {"job_id": j, "status": "unknown"}) for j in job_ids]


def render(jobs: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="rmbg demo jobs")
    for col in ("job", "status", "model", "size", "ms", "KiB orig/mask/cut", "error"):
        table.add_column(col, overflow="fold")
    for j in jobs:
        size = f"{j.get('image_width')}x{j.get('image_height')}" if j.get("image_width") else "-"
        sizes = "/".join(f"{(j.get(k) or 0) / 1024:.0f}" for k in ("original_bytes", "mask_bytes", "processed_bytes"))
        table.add_row(
            str(j.get("job_id", ""))[-12:],
            str(j.get("status")),
            str(j.get("model_name") or "-"),
            size,
            str(j.get("processing_time_ms") or "-"),
            sizes,
            str(j.get("error_message") or ""),
        )
    console.print(table)
    for j in jobs:
        console.print(f"[bold]{j.get('job_id')}[/]")
        for label, key in (("original", "original_path"), ("mask", "mask_path"), ("cut-out", "processed_path")):
            console.print(f"  {label:8} {j.get(key) or '-'}", soft_wrap=True)


async def daily_stats(client: httpx.AsyncClient, headers: dict[str, str], *, days: int) -> list[dict[str, Any]]:
    resp = await client.get("/v1/admin/stats/daily", params={"days": days}, headers=headers)
    if resp.status_code != 200:
        return []
    rows: list[dict[str, Any]] = resp.json().get("days") or []
    return rows


def _counted(rows: list[dict[str, Any]]) -> tuple[int, int]:
    """(completed, failed) over the rows."""
    return sum(int(r.get("completed_jobs") or 0) for r in rows), sum(int(r.get("failed_jobs") or 0) for r in rows)


async def wait_counted(
    client: httpx.AsyncClient, headers: dict[str, str], *, at_least: tuple[int, int], timeout_s: float
) -> bool:
    """Until the stats count ``at_least`` (completed, failed) jobs today and yesterday (a demo may cross
    midnight UTC): the stats service applies job events a moment after the row changed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        completed, failed = _counted(await daily_stats(client, headers, days=2))
        if completed >= at_least[0] and failed >= at_least[1]:
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.25)


async def run_demo(api_url: str, settings: BaseServiceSettings, console: Console, *, timeout_s: float = 600) -> bool:
    user = "demo-user"
    keys = KeyRing(settings, name="demo")
    # The demo user's key submits and reads its jobs (the upload event's job is the same user's); the
    # global stats need an admin key.
    user_headers = await keys.headers(user)
    admin_headers = await keys.headers("demo-admin", admin=True)
    async with httpx.AsyncClient(base_url=api_url, timeout=60, headers=user_headers) as client:
        # What the stats counted before (an earlier demo in the same state folder), so the summary
        # waits for this run's jobs to be counted too.
        before = _counted(await daily_stats(client, admin_headers, days=2))
        job_ids = [await submit_http(client, n, tags="demo,sample") for n in SAMPLES[:-1]]
        job_ids.append(await submit_upload_event(settings, SAMPLES[-1], user_id=user))
        console.print(f"submitted {len(job_ids)} jobs as {user}; waiting for results...")
        jobs = await wait_terminal(client, job_ids, timeout_s=timeout_s)
        ended = (
            sum(1 for j in jobs if j.get("status") == "completed"),
            sum(1 for j in jobs if j.get("status") == "failed"),
        )
        want = (before[0] + ended[0], before[1] + ended[1])
        if not await wait_counted(client, admin_headers, at_least=want, timeout_s=30):
            console.print("[yellow]the stats did not count every job within 30 s[/]")
        stats = {"days": await daily_stats(client, admin_headers, days=1)}
    render(jobs, console)
    latencies = sorted(int(j["processing_time_ms"]) for j in jobs if j.get("processing_time_ms") is not None)
    if latencies:
        console.print(
            f"per-job latency, acceptance to completed: min {latencies[0]} ms, "
            f"median {latencies[len(latencies) // 2]} ms, max {latencies[-1]} ms"
        )
    console.print(f"processing_stats today: {stats.get('days')}")
    console.print(f"more keys: rmbg keys create --user {user}  (then send 'Authorization: Bearer <key>')")
    return all(j.get("status") == "completed" for j in jobs)
