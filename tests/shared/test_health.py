"""Health and telemetry: what /healthz, /readyz and /metrics answer, and the collectors read at scrape time."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import httpx
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from rmbg.stack import StackEndpoints
from shared.config import S3Settings
from shared.health import ConsumerWatch, Health
from shared.storage import open_object_store
from shared.telemetry import PipelineMetrics, PoolCollector, open_telemetry_server


async def _ok() -> None:
    return None


async def _refused() -> None:
    raise ConnectionRefusedError("connection refused")


async def _hangs() -> None:
    await asyncio.sleep(30)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_ready_only_when_every_dependency_condition_and_consumer_is() -> None:
    metrics = PipelineMetrics.create()
    health = Health(timeout_s=0.2, dependency_up=metrics.dependency_up, ready=metrics.ready, cache_s=0)
    health.add_dependency("postgres", _ok)
    health.add_dependency("s3", _hangs)
    health.add_dependency("kafka", _refused)
    model = health.condition("model", waiting="loading tiny")
    watch = health.consumer(group="g", topic="t")

    started = time.monotonic()
    report = await health.readiness()
    assert time.monotonic() - started < 1.0, "checks run concurrently, each within the timeout"
    assert not report.ok
    assert report.checks["postgres"] == "ok"
    assert report.checks["s3"] == "down: no answer within 0.2 s"
    assert report.checks["kafka"].startswith("down: ") and "refused" in report.checks["kafka"]
    assert report.checks["model"] == "waiting: loading tiny"
    assert report.checks["consumer g"].startswith("waiting: group g has not assigned")
    assert metrics.dependency_up.labels(dependency="s3")._value.get() == 0
    assert metrics.dependency_up.labels(dependency="postgres")._value.get() == 1
    assert metrics.ready._value.get() == 0

    health.add_dependency("s3", _ok)
    health.add_dependency("kafka", _ok)
    model.set_ready("tiny@v1")
    watch.on_assigned([TopicPartition("t", 0), TopicPartition("t", 1)])
    report = await health.readiness()
    assert report.ok, report.checks
    assert report.checks["consumer g"] == "ok: 2 partitions of t"
    assert metrics.ready._value.get() == 1
    # A rebalance that takes the partitions away for a moment does not make a joined member unready.
    watch.on_revoked([TopicPartition("t", 0), TopicPartition("t", 1)])
    assert (await health.readiness()).ok


async def test_a_wedged_loop_fails_liveness_and_a_polling_one_passes() -> None:
    health = Health(wedged_after_s=0.2)
    watch = health.consumer(group="g", topic="t")
    assert health.liveness().ok
    watch.batch_started()
    await asyncio.sleep(0.3)
    report = health.liveness()
    assert not report.ok and report.checks["consumer g"].startswith("wedged: one batch for")
    watch.progressed()
    assert health.liveness().ok


async def test_readiness_is_checked_once_for_concurrent_callers() -> None:
    calls = 0

    async def counted() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)

    health = Health(cache_s=1.0)
    health.add_dependency("postgres", counted)
    await asyncio.gather(*(health.readiness() for _ in range(10)))
    assert calls == 1


async def test_the_telemetry_server_answers_metrics_healthz_and_readyz() -> None:
    metrics = PipelineMetrics.create()
    health = Health(timeout_s=0.2, dependency_up=metrics.dependency_up, ready=metrics.ready, cache_s=0)
    health.add_dependency("postgres", _ok)
    model = health.condition("model", waiting="loading")
    hooked: list[int] = []

    async def hook() -> None:
        hooked.append(1)
        metrics.unfinished_jobs.set(7)

    async with (
        open_telemetry_server(metrics.registry, health, port=0, hooks=[hook]) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        assert (await client.get("/healthz")).status_code == 200
        not_ready = await client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json() == {"ready": False, "checks": {"postgres": "ok", "model": "waiting: loading"}}
        model.set_ready("tiny")
        assert (await client.get("/readyz")).status_code == 200
        scraped = await client.get("/metrics")
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
        samples = _samples(scraped.text)
        assert samples[("rmbg_dependency_up", (("dependency", "postgres"),))] == 1
        assert samples[("rmbg_ready", ())] == 1
        assert samples[("rmbg_unfinished_jobs", ())] == 7 and hooked


def test_pool_use_is_read_at_scrape_time() -> None:
    pool = SimpleNamespace(get_size=lambda: 5, get_idle_size=lambda: 2, get_max_size=lambda: 10)
    registry = CollectorRegistry()
    registry.register(PoolCollector(pool))
    assert registry.get_sample_value("rmbg_db_pool_connections", {"state": "in_use"}) == 3
    assert registry.get_sample_value("rmbg_db_pool_connections", {"state": "idle"}) == 2
    assert registry.get_sample_value("rmbg_db_pool_max_connections") == 10


async def test_s3_calls_errors_and_retries_are_counted(stack: StackEndpoints) -> None:
    metrics = PipelineMetrics.create()
    settings = S3Settings(
        endpoint_url=stack.s3_endpoint,
        access_key=stack.s3_access_key,
        secret_key=stack.s3_secret_key,  # type: ignore[arg-type]
        bucket="rmbg-health-test",
    )
    async with open_object_store(settings, counters=metrics.s3()) as store:
        await store.ensure_bucket()
        assert await store.head("no/such/key") is None
        await store.ping()
    registry = metrics.registry
    assert registry.get_sample_value("rmbg_s3_requests_total", {"operation": "HeadObject"}) == 1
    assert registry.get_sample_value(
        "rmbg_s3_request_errors_total", {"operation": "HeadObject", "error_class": "not_found"}
    ) == 1
    assert (registry.get_sample_value("rmbg_s3_requests_total", {"operation": "HeadBucket"}) or 0) >= 1

    # Nothing listens on the port: every attempt is refused, the client retries, the call fails.
    with_socket_closed = S3Settings(endpoint_url="http://127.0.0.1:9", bucket="x")
    async with open_object_store(with_socket_closed, counters=metrics.s3()) as store:
        try:
            await store.ping()
        except Exception as exc:  # StorageUnavailable
            assert "HEAD bucket x" in str(exc)
        else:
            raise AssertionError("a store nobody serves answered")
    assert registry.get_sample_value(
        "rmbg_s3_request_errors_total", {"operation": "HeadBucket", "error_class": "connection"}
    ) == 1
    assert (registry.get_sample_value("rmbg_s3_retries_total", {"operation": "HeadBucket"}) or 0) >= 1


def test_a_consumer_watch_counts_joined_from_the_first_assignment() -> None:
    watch = ConsumerWatch(group="g", topic="t")
    assert watch.readiness().startswith("waiting")
    watch.on_assigned([])  # more members than partitions: a spare, in the group
    assert watch.readiness().startswith("ok: joined group g, no partitions")
