"""`rmbg up` prints no password, and Ctrl+C (its stop event) stops it within seconds in every phase."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from rich.console import Console

from rmbg import up
from rmbg.stack.stack import StackEndpoints
from rmbg.stack.urls import redact_url
from rmbg.supervisor import RunningServices, Supervisor

# Well under every wait it cuts short: a server's 30 s start, /readyz's 180 s, the demo's 600 s.
STOPS_WITHIN_S = 5.0


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://default:s3cret@host:6379/0", "redis://default:***@host:6379/0"),
        ("postgresql://app:hunter2@db.internal:5432/rmbg", "postgresql://app:***@db.internal:5432/rmbg"),
        ("postgresql://app@db.internal/rmbg?password=hunter2", "postgresql://app@db.internal/rmbg?password=***"),
        (
            "postgresql://db.internal/rmbg?sslmode=require&PASSWORD=hunter2&sslpassword=k3y",
            "postgresql://db.internal/rmbg?sslmode=require&PASSWORD=***&sslpassword=***",
        ),
        ("redis://:p@ss@host/0", "redis://:***@host/0"),  # an unquoted "@" in the password
        ("postgresql://app@db.internal/rmbg?host=/run/pg", "postgresql://app@db.internal/rmbg?host=/run/pg"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("127.0.0.1:9092,kafka-2:9092", "127.0.0.1:9092,kafka-2:9092"),
        ("http://[::1", "***"),  # unparseable: nothing of it shown
    ],
)
def test_redact_url_hides_every_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.fixture
def restored_env() -> Iterator[None]:
    """run_up exports the stack's RMBG_* variables for its services: undo that after each test."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


async def _forever(events: list[str], name: str) -> None:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        events.append(f"{name} cancelled")
        raise


class _FakeStack:
    def __init__(self, events: list[str], hang: bool, state_dir: Path) -> None:
        self._events = events
        self._hang = hang
        self._state_dir = state_dir

    async def __aenter__(self) -> StackEndpoints:
        if self._hang:
            await _forever(self._events, "stack start")
        return StackEndpoints(
            postgres_dsn="postgresql://app@db.internal/rmbg?password=hunter2",
            redis_url="redis://:s3cret@redis.internal:6379/0",
            kafka_bootstrap="kafka.internal:9092",
            s3_endpoint="http://minio:m1nio-secret@s3.internal:9000",
            s3_access_key="key",
            s3_secret_key="secret",
            state_dir=self._state_dir,
            started=(),
        )

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._events.append("stack stopped")


@pytest.mark.parametrize("phase", ["stack", "provision", "services", "demo", "serving"])
async def test_stop_ends_rmbg_up_within_seconds_in_every_phase(
    phase: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restored_env: None
) -> None:
    events: list[str] = []

    def stack(*args: Any, **kwargs: Any) -> _FakeStack:
        return _FakeStack(events, phase == "stack", tmp_path)

    async def provision(settings: object) -> list[str]:
        if phase == "provision":
            await _forever(events, "provision")
        return []

    @contextlib.asynccontextmanager
    async def run_services(**kwargs: Any) -> AsyncIterator[RunningServices]:
        try:
            if phase == "services":
                await _forever(events, "services ready")
            yield RunningServices(
                api_url="http://127.0.0.1:1",
                metrics_urls={},
                ready_urls={},
                logs={},
                supervisor=Supervisor(ready_timeout_s=1, on_restart=lambda *args: None),
                ready_s={},
            )
        finally:
            events.append("services stopped")

    async def run_demo(*args: Any, **kwargs: Any) -> bool:
        await _forever(events, "demo")
        return True

    monkeypatch.setattr(up, "EmbeddedStack", stack)
    monkeypatch.setattr(up, "provision", provision)
    monkeypatch.setattr(up, "run_services", run_services)
    monkeypatch.setattr(up, "run_demo", run_demo)
    out = io.StringIO()
    opts = up.UpOptions(
        state_dir=tmp_path, demo=phase != "serving", backend="classic", model_source="x", model_name=None, api_port=None
    )
    stop = asyncio.Event()
    running = asyncio.create_task(up.run_up(opts, stop, Console(file=out, width=200)))
    await asyncio.sleep(0.3)  # into the phase's wait
    assert not running.done()
    stop.set()
    assert await asyncio.wait_for(running, STOPS_WITHIN_S) == 0
    stopped = ["services stopped", "stack stopped"]  # what had started, in reverse
    expected = {
        "stack": ["stack start cancelled"],
        "provision": ["provision cancelled", "stack stopped"],
        "services": ["services ready cancelled", *stopped],
        "demo": ["demo cancelled", *stopped],
        "serving": stopped,
    }
    assert events == expected[phase]
    printed = out.getvalue()
    assert "stopping services and servers" in printed
    if phase in ("demo", "serving"):  # the table of endpoints was printed, without a password
        assert "redis://:***@redis.internal:6379/0" in printed
        assert "postgresql://app@db.internal/rmbg?password=***" in printed
        assert "http://minio:***@s3.internal:9000" in printed
        assert not any(secret in printed for secret in ("hunter2", "s3cret", "m1nio-secret"))
