"""deploy/monitoring/: the alert rules, their unit tests, the Grafana dashboard and the Prometheus config.

- promtool accepts the rules and the Prometheus config (deploy/monitoring/prometheus.yml), and ``promtool
  test rules`` passes: every alert fires on series that should make it fire and stays silent on series
  that should not (each alert has both kinds of case).
- Every metric a rule or a panel names is one the services export (their registries, walked as the
  services build them) or an exporter's from the allowance below (node_exporter, postgres_exporter and the
  queries of deploy/k8s/base/postgres-exporter.yaml); every metric the services export is on the dashboard.
- A real Prometheus scrapes the running pipeline (the e2e ``pipeline`` fixture), finds every service up
  and ready, evaluates every rule and every panel's query without error, and sees the job metrics move as
  jobs complete.

promtool and prometheus come from Debian's ``prometheus`` package (``make monitoring`` installs it). The tests
fail, never skip, when they are missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import yaml

from rmbg.demo import sample_bytes
from services.persister.webhooks import WebhookMetrics
from shared.telemetry import STAGES, GpuMemoryCollector, PipelineMetrics, PoolCollector
from tests.e2e.conftest import Pipeline, pipeline  # noqa: F401 - the fixture, used by the last test

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "alerts.yml"
RULE_TESTS = MONITORING / "tests" / "alerts_test.yml"
DASHBOARD = MONITORING / "grafana" / "rmbg-pipeline.json"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
EXPORTER_MANIFEST = ROOT / "deploy" / "k8s" / "base" / "postgres-exporter.yaml"

# Metrics of other exporters that rules and panels may name: node_exporter's filesystem series and
# postgres_exporter's built-in ones (seen from Debian's 0.11.1 in tests/rmbg/test_postgres_exporter.py),
# plus Prometheus's own `up`. postgres_exporter's queries from the manifest are added by _exporter_queries.
ALLOWED_EXTERNAL = {
    "up",
    "node_filesystem_avail_bytes",
    "node_filesystem_size_bytes",
    "node_filesystem_readonly",
    "pg_up",
    "pg_stat_archiver_archived_count",
    "pg_stat_archiver_failed_count",
}
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_SERVICES = ("ingest", "inference", "persister", "stats")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: it comes with Debian's prometheus package "
            "(`make monitoring`, or `apt-get install -y --no-install-recommends prometheus`)",
            pytrace=False,
        )
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def _panels() -> list[dict[str, Any]]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    return list(walk(json.loads(DASHBOARD.read_text())["panels"]))


def _dashboard_exprs() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _panels() for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a tokeniser, enough for the queries kept here)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}", " ", text)  # matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        if word in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue  # an operator, or a function
        if match.start() > 0 and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "."):
            continue  # part of a number (1e9) or a duration
        names.add(word)
    return names


def _exported() -> tuple[set[str], set[str]]:
    """(sample names, family names) of everything the services export, walked from the registries they build."""
    metrics = PipelineMetrics.create()
    WebhookMetrics.create(metrics.registry)
    pool = SimpleNamespace(get_size=lambda: 1, get_idle_size=lambda: 1, get_max_size=lambda: 1)
    metrics.registry.register(PoolCollector(pool))
    # GPU memory is registered only where CUDA is; its families are described all the same.
    families = [*metrics.registry.collect(), *GpuMemoryCollector().describe()]
    samples: set[str] = set()
    names: set[str] = set()
    for family in families:
        names.add(family.name)
        if family.type == "counter":
            samples |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            samples |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count", f"{family.name}_created"}
        else:
            samples.add(family.name)
    return samples, names


def _exporter_queries() -> set[str]:
    """The series postgres_exporter makes of the manifest's queries: <query>_<column> for each value column."""
    docs = list(yaml.safe_load_all(EXPORTER_MANIFEST.read_text()))
    config = next(d for d in docs if d and d.get("kind") == "ConfigMap")
    queries = yaml.safe_load(config["data"]["queries.yaml"])
    out = set()
    for query, spec in queries.items():
        for column in spec["metrics"]:
            ((name, info),) = column.items()
            if info["usage"] in ("GAUGE", "COUNTER"):
                out.add(f"{query}_{name}")
    return out


# -- promtool --------------------------------------------------------------------------------------------------


def test_promtool_accepts_the_rules_and_the_config() -> None:
    promtool = _tool("promtool")
    rules = _run(promtool, "check", "rules", str(RULES))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    # Debian builds Prometheus without Kubernetes service discovery: the config is checked with each
    # kubernetes_sd_configs replaced by an empty static list (relabelling, rule files and all the rest as is).
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    for job in config["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["static_configs"] = [{"targets": []}]
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "prometheus.yml"
        copy.write_text(yaml.safe_dump(config))
        shutil.copy(RULES, Path(tmp) / "alerts.yml")
        checked = _run(promtool, "check", "config", str(copy))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_fires_and_stays_silent_in_the_rule_tests() -> None:
    promtool = _tool("promtool")
    result = _run(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    for rule in _rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']}: no test case where it fires"
        assert any(not c["exp_alerts"] for c in mine), f"{rule['alert']}: no test case where it stays silent"


# -- names -----------------------------------------------------------------------------------------------------


def test_the_tokeniser_finds_metric_names_and_nothing_else() -> None:
    expr = (
        'sum by (model) (rate(rmbg_job_transitions_total{status="failed"}[10m])) / ignoring(state) '
        'rmbg_db_pool_max_connections >= 0.9 and predict_linear(node_filesystem_avail_bytes{fstype!~"a|b"}[6h], '
        "24 * 3600) < 0 and histogram_quantile(0.95, sum by (le) (rate(rmbg_stage_seconds_bucket[$__rate_interval])))"
    )
    assert metric_names(expr) == {
        "rmbg_job_transitions_total",
        "rmbg_db_pool_max_connections",
        "node_filesystem_avail_bytes",
        "rmbg_stage_seconds_bucket",
    }


def test_every_rule_and_panel_names_an_exported_metric() -> None:
    samples, _ = _exported()
    allowed = samples | ALLOWED_EXTERNAL | _exporter_queries()
    queries = [(f"rule {r['alert']}", r["expr"]) for r in _rules()] + [
        (f"panel {t}", e) for t, e in _dashboard_exprs()
    ]
    unknown = {
        f"{where}: {name}" for where, expr in queries for name in metric_names(expr) if name not in allowed
    }
    assert not unknown, f"queries name metrics nobody exports: {sorted(unknown)}"
    assert all(metric_names(expr) for _, expr in queries), "a query that names no metric"


def test_every_exported_metric_is_on_the_dashboard() -> None:
    _, families = _exported()
    shown = {name for _, expr in _dashboard_exprs() for name in metric_names(expr)}
    shown_families = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in shown} | shown
    missing = sorted(f for f in families if f not in shown_families)
    assert not missing, f"exported but on no panel: {missing}"


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    panels = _panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, f"{panel['title']} is wider than the grid"
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), f"{panel['title']}: targets {refs}"


# -- a real Prometheus on the running pipeline ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def _prometheus(targets: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    """Prometheus on a free port, scraping each service's /metrics every second, with the alert rules loaded."""
    binary = _tool("prometheus")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="rmbg-prometheus-") as tmp:
        scrape = []
        for service, url in targets.items():
            hostport, path = url.removeprefix("http://").split("/", 1)
            scrape.append(
                {"job_name": f"rmbg-{service}", "metrics_path": f"/{path}", "static_configs": [{"targets": [hostport]}]}
            )
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": scrape,
        }
        config_path = Path(tmp) / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        proc = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={tmp}/data",
            f"--web.listen-address=127.0.0.1:{port}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                for _ in range(300):
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get("/-/ready")).status_code == 200:
                            break
                    if proc.returncode is not None:
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError("prometheus did not become ready within 30 s")
                assert proc.returncode is None, "prometheus exited at start"
                yield client
        finally:
            if proc.returncode is None:
                proc.terminate()
            _, err = await proc.communicate()
            assert b"level=error" not in err, err.decode()[-3000:]


async def _query(prom: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
    resp = await prom.get("/api/v1/query", params={"query": expr})
    body = resp.json()
    assert resp.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def _value(prom: httpx.AsyncClient, expr: str) -> float:
    result = await _query(prom, expr)
    return float(result[0]["value"][1]) if result else 0.0


async def _until(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    last = None
    while asyncio.get_running_loop().time() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(0.5)
    raise AssertionError(f"{what} within {timeout_s:.0f} s (last: {last})")


async def test_prometheus_scrapes_the_pipeline_and_sees_jobs_complete(pipeline: Pipeline) -> None:  # noqa: F811
    assert set(pipeline.metrics_urls) == set(_SERVICES)
    async with _prometheus(pipeline.metrics_urls) as prom:

        async def all_up() -> bool:
            targets = (await prom.get("/api/v1/targets")).json()["data"]["activeTargets"]
            return len(targets) == 4 and all(t["health"] == "up" for t in targets)

        await _until(all_up, 30, "every service scraped")
        ready = await _query(prom, "rmbg_ready")
        assert {r["metric"]["job"]: r["value"][1] for r in ready} == {f"rmbg-{s}": "1" for s in _SERVICES}
        deps = await _query(prom, "min by (dependency) (rmbg_dependency_up)")
        assert {r["metric"]["dependency"]: r["value"][1] for r in deps} == {"postgres": "1", "s3": "1", "kafka": "1"}

        completed = 'sum(rmbg_job_transitions_total{job="rmbg-persister",status="completed"}) or vector(0)'
        accepted = 'sum(rmbg_job_transitions_total{job="rmbg-ingest",status="pending"}) or vector(0)'
        before_completed, before_accepted = await _value(prom, completed), await _value(prom, accepted)
        async with pipeline.client("prometheus-watcher") as client:
            job_ids = []
            for name in ("astronaut.png", "coffee.png", "chelsea.png"):
                resp = await client.post("/v1/jobs", files={"image": (name, sample_bytes(name), "image/png")})
                assert resp.status_code == 202, resp.text
                job_ids.append(resp.json()["job_id"])

            async def all_completed() -> bool:
                statuses = [(await client.get(f"/v1/jobs/{j}")).json()["status"] for j in job_ids]
                return all(s == "completed" for s in statuses)

            await _until(all_completed, 120, "the three jobs completed")

        async def counted() -> tuple[float, float] | None:
            done, took = await _value(prom, completed), await _value(prom, accepted)
            return (done, took) if done >= before_completed + 3 and took >= before_accepted + 3 else None

        await _until(counted, 30, "Prometheus saw three more jobs accepted and completed")
        by_source = await _query(prom, 'sum by (model, source) (rmbg_job_transitions_total{status="completed"})')
        assert any(r["metric"]["source"] == "http" and r["metric"]["model"] for r in by_source), by_source
        stages = {r["metric"]["stage"] for r in await _query(prom, "sum by (stage) (rmbg_stage_seconds_count)")}
        assert set(STAGES) <= stages, stages
        partitions = await _query(prom, "sum by (group) (rmbg_consumer_assigned_partitions)")
        groups = {r["metric"]["group"] for r in partitions}
        assert groups >= {"rmbg-inference", "rmbg-persister", "rmbg-stats", "rmbg-ingest"}, groups

        # Every panel's query and every rule evaluates on real series without error.
        for _, expr in _dashboard_exprs():
            await _query(prom, expr.replace("$__rate_interval", "1m"))

        async def rules_evaluated() -> list[str] | None:
            groups = (await prom.get("/api/v1/rules")).json()["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            if len(rules) != len(_rules()) or any(r.get("lastEvaluation", "").startswith("0001") for r in rules):
                return None
            return [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"] or ["ok"]

        assert await _until(rules_evaluated, 30, "every rule evaluated") == ["ok"]
        # Nothing is wrong in a healthy pipeline: no alert fires but the ones about exporters not scraped here.
        alerts = (await prom.get("/api/v1/alerts")).json()["data"]["alerts"]
        assert not [a for a in alerts if a["labels"]["alertname"].startswith("Rmbg") and a["state"] == "firing"], alerts
