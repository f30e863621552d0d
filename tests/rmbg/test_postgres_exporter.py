"""The deployment's postgres_exporter, for real: Debian's binary (the version the manifest's image pins) with
the manifest's own queries, against a migrated database on the local server; its /metrics must show the
database up, the archiver's figures and the project's rmbg_* series."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import yaml

from tests.support.databases import migrated_database
from tests.support.tools import require_tool

MANIFEST = Path(__file__).parents[2] / "deploy" / "k8s" / "base" / "postgres-exporter.yaml"


def _docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def migrated_dsn() -> AsyncIterator[str]:
    async with migrated_database("rmbg_exporter") as dsn:
        yield dsn


def test_the_manifest_reads_its_dsn_from_the_secret_and_pins_the_tested_version() -> None:
    deployment = next(d for d in _docs() if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["DATA_SOURCE_NAME"]["valueFrom"]["secretKeyRef"] == {
        "name": "rmbg-secrets", "key": "POSTGRES_EXPORTER_DSN"
    }
    assert "value" not in env["DATA_SOURCE_NAME"]  # never a DSN (with its password) in the manifest
    assert container["image"].endswith(":v0.11.1")
    for version in ("1.30", kubernetes_validate.utils.latest_version()):
        for doc in _docs():
            kubernetes_validate.validate(doc, version, strict=True)


async def test_the_exporter_scrapes_the_local_server(migrated_dsn: str, tmp_path: Path) -> None:
    binary = require_tool("prometheus-postgres-exporter", package="prometheus-postgres-exporter")
    config = next(d for d in _docs() if d["kind"] == "ConfigMap")
    queries = tmp_path / "queries.yaml"
    queries.write_text(config["data"]["queries.yaml"])
    deployment = next(d for d in _docs() if d["kind"] == "Deployment")
    port = _free_port()
    args = [
        a.replace("/etc/postgres-exporter/queries.yaml", str(queries)).replace(":9187", f"127.0.0.1:{port}")
        for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    ]
    # lib/pq asks for TLS unless told: the local server is reached over loopback without it.
    env = {**os.environ, "DATA_SOURCE_NAME": f"{migrated_dsn}?sslmode=disable"}
    proc = await asyncio.create_subprocess_exec(
        str(binary), *args, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        text = ""
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(100):
                try:
                    resp = await client.get(f"http://127.0.0.1:{port}/metrics")
                    if resp.status_code == 200 and "pg_up" in resp.text:
                        text = resp.text
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        assert text, "the exporter never answered on /metrics"
        assert re.search(r"^pg_up 1$", text, re.M), [line for line in text.splitlines() if "pg_up" in line]
        archiver = {line.split(" ")[0] for line in text.splitlines() if line.startswith("pg_stat_archiver_")}
        assert {"pg_stat_archiver_archived_count", "pg_stat_archiver_failed_count"} <= {
            name.split("{")[0] for name in archiver
        }, archiver
        assert re.search(r'^rmbg_partitions_months_ahead\{.*relation="image_process_jobs".*\} 3$', text, re.M)
        assert re.search(r'^rmbg_partitions_current\{.*relation="image_tags".*\} 1$', text, re.M)
        # Ages, never negative: with now() (the query's own transaction start) a younger session gave one.
        ages = re.findall(r"^rmbg_sessions_(?:oldest_xact|longest_query)_seconds(?:\{[^}]*\})? (\S+)$", text, re.M)
        assert len(ages) == 2 and all(float(age) >= 0 for age in ages), ages
        assert re.search(r'^rmbg_tables_dead_rows\{.*relation="processing_stats".*\} ', text, re.M)
        assert re.search(r"^rmbg_archive_ready_segments(\{[^}]*\})? \d", text, re.M)
        # A query of ours that failed shows as pg_exporter_user_queries_load_error or an error log line.
        assert not re.search(r"^pg_exporter_user_queries_load_error\{.*\} 1$", text, re.M)
    finally:
        proc.terminate()
        _, err = await proc.communicate()
    assert b"level=error" not in err, err.decode()[-2000:]
