"""deploy/kubernetes and deploy/kserve, checked offline: the core kinds against Kubernetes' own
schemas (kubernetes-validate, strict), KServe's kinds against KServe's CRDs (tests/data/kserve),
and the settings that must agree across them: ports, probes, shutdown timings, the image's user."""

from __future__ import annotations

import copy
import hashlib
import lzma
import re
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft7Validator

from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
KSERVE = ROOT / "deploy" / "kserve"
CRDS = Path(__file__).parent / "data" / "kserve"
CRD_SHA256 = {
    "serving.kserve.io_servingruntimes.yaml": (
        "5a262831474e7bd23e7c4f76556d84e1a11fb3ad74a78a6d18cfc71fd8fca7a2"
    ),
    "serving.kserve.io_inferenceservices.yaml": (
        "57c3bf13f77de94678bf2ae3748056ec071ad2b9e88d6a28f44fb4710758fcff"
    ),
}
# The oldest Kubernetes the manifests are for (preStop `sleep` is on by default from 1.30) and
# the newest whose schemas kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.30", "1.37")
SETTINGS = {f"BATCHSERVE_{name.upper()}" for name in Settings.model_fields}
# Helm values for Prometheus Adapter, not a Kubernetes object.
ADAPTER_VALUES = KUBERNETES / "queue-depth" / "prometheus-adapter-values.yaml"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kubernetes_files() -> list[Path]:
    return sorted(p for p in KUBERNETES.rglob("*.yaml") if p != ADAPTER_VALUES)


def one(kind: str, directory: Path = KUBERNETES, name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for path in sorted(directory.glob("*.yaml"))
        if path != ADAPTER_VALUES
        for d in documents(path)
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{len(found)} {kind} in {directory}"
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


# -- Kubernetes' own kinds -----------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", kubernetes_files(), ids=lambda p: str(p.relative_to(KUBERNETES)))
def test_manifest_is_valid_for_kubernetes(path: Path, version: str) -> None:
    for document in documents(path):
        kubernetes_validate.validate(document, version, strict=True)


def test_kubernetes_validation_catches_a_misspelt_key() -> None:
    broken = copy.deepcopy(one("Deployment"))
    c = container(broken)
    c["readinesProbe"] = c.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_every_probe_uses_the_health_port_batchserve_listens_on() -> None:
    c = container(one("Deployment"))
    health = next(p for p in c["ports"] if p["name"] == "health")
    assert str(health["containerPort"]) == env_of(c)["BATCHSERVE_HEALTH_PORT"]
    paths = {}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == "health", probe
        paths[probe] = c[probe]["httpGet"]["path"]
    # Ready = models loaded and not draining; live = the process answers. A pod that is merely
    # busy or draining must not be restarted.
    assert paths == {
        "startupProbe": "/v2/health/ready",
        "readinessProbe": "/v2/health/ready",
        "livenessProbe": "/v2/health/live",
    }


def test_the_grace_period_outlasts_prestop_drain_and_grace() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    c = container(one("Deployment"))
    env = env_of(c)
    pre_stop_s = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain_s = float(env["BATCHSERVE_SHUTDOWN_DRAIN_S"])
    grace_s = float(env["BATCHSERVE_SHUTDOWN_GRACE_S"])
    # The kubelet counts the preStop hook inside terminationGracePeriodSeconds, then SIGKILLs.
    assert pod["terminationGracePeriodSeconds"] > pre_stop_s + drain_s + grace_s
    # A draining pod answers readiness 503 for at least one readiness period.
    assert drain_s >= c["readinessProbe"]["periodSeconds"]


def test_pods_run_as_the_image_user_on_a_read_only_root() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    c = container(one("Deployment"))
    user = re.search(r"^USER (\d+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert user is not None
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(user.group(1))
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # The one writable place: /tmp, where the image's WORKDIR is.
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_cpu_autoscaling_has_cpu_requests_to_measure_against() -> None:
    requests = container(one("Deployment"))["resources"]["requests"]
    assert requests["cpu"] and requests["memory"]
    queue_depth = one("HorizontalPodAutoscaler", KUBERNETES / "queue-depth")
    for hpa in (one("HorizontalPodAutoscaler"), queue_depth):
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", "batchserve")
        assert hpa["spec"]["minReplicas"] >= 2  # with the PDB, a drain keeps one pod serving
        cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
        assert cpu[0]["resource"]["name"] == "cpu"


def test_service_budget_and_autoscalers_select_the_deployment_pods() -> None:
    deployment = one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {p["name"] for p in container(deployment)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    budget = one("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] < deployment["spec"]["replicas"]


def test_every_batchserve_variable_in_the_manifests_is_a_setting() -> None:
    names = {e["name"] for e in container(one("Deployment"))["env"]}
    names |= {e["name"] for e in one("ServingRuntime", KSERVE)["spec"]["containers"][0]["env"]}
    assert {n for n in names if n.startswith("BATCHSERVE_")} - SETTINGS == set()


def test_queue_depth_autoscaling_asks_for_the_metric_the_adapter_serves(
    shipped_server: str,
) -> None:
    hpa = one("HorizontalPodAutoscaler", KUBERNETES / "queue-depth")
    wanted = next(m for m in hpa["spec"]["metrics"] if m["type"] == "Pods")["pods"]["metric"]
    values = yaml.safe_load(ADAPTER_VALUES.read_text())
    rule = values["rules"]["custom"][0]
    assert rule["name"]["as"] == wanted["name"]
    series = re.match(r"^(\w+)\{", rule["seriesQuery"])
    assert series is not None and re.fullmatch(rule["name"]["matches"], series.group(1))
    # ... and batchserve exports that series, one per model version, on the port Prometheus
    # is told to scrape.
    deployment = one("Deployment")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    http = next(p for p in container(deployment)["ports"] if p["name"] == "http")
    assert annotations["prometheus.io/port"] == str(http["containerPort"])
    with urllib.request.urlopen(shipped_server + annotations["prometheus.io/path"]) as response:
        text = response.read().decode()
    assert re.search(
        rf'^{series.group(1)}\{{model="names-rnn",version="1"\}} \d', text, re.MULTILINE
    )


# -- KServe ---------------------------------------------------------------------------------------


def crd_validator(file_name: str) -> Draft7Validator:
    raw = lzma.decompress((CRDS / f"{file_name}.xz").read_bytes())
    assert hashlib.sha256(raw).hexdigest() == CRD_SHA256[file_name], "see data/kserve/SOURCE.md"
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C parser: 1.9 MB of YAML
    version = yaml.load(raw, Loader=loader)["spec"]["versions"][0]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def _strict(schema: Any) -> Any:
    """The API server rejects unknown fields (kubectl's default field validation); jsonschema
    would let them through unless each object with listed properties forbids the others."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def serving_runtime_schema() -> Draft7Validator:
    return crd_validator("serving.kserve.io_servingruntimes.yaml")


@pytest.fixture(scope="module")
def inference_service_schema() -> Draft7Validator:
    return crd_validator("serving.kserve.io_inferenceservices.yaml")


def _problems(validator: Draft7Validator, document: dict[str, Any]) -> list[str]:
    return [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(document)]


def test_serving_runtime_follows_kserves_crd(serving_runtime_schema: Draft7Validator) -> None:
    runtime = one("ServingRuntime", KSERVE)
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert _problems(serving_runtime_schema, runtime) == []


def test_inference_services_follow_kserves_crd(inference_service_schema: Draft7Validator) -> None:
    services = documents(KSERVE / "inferenceservice.yaml")
    assert len(services) == 2
    for service in services:
        assert service["apiVersion"] == "serving.kserve.io/v1beta1"
        assert _problems(inference_service_schema, service) == []


def test_kserve_validation_catches_a_misspelt_key(
    serving_runtime_schema: Draft7Validator, inference_service_schema: Draft7Validator
) -> None:
    runtime = copy.deepcopy(one("ServingRuntime", KSERVE))
    runtime["spec"]["containers"][0]["readinesProbe"] = {}
    assert _problems(serving_runtime_schema, runtime) != []
    service = copy.deepcopy(documents(KSERVE / "inferenceservice.yaml")[0])
    service["spec"]["predictor"]["model"]["storageURI"] = "gs://x"
    assert _problems(inference_service_schema, service) != []


def test_serving_runtime_is_what_kserve_expects_of_a_v2_server() -> None:
    spec = one("ServingRuntime", KSERVE)["spec"]
    assert spec["protocolVersions"] == ["v2"]
    c = spec["containers"][0]
    assert c["name"] == "kserve-container"
    env = env_of(c)
    assert env["BATCHSERVE_PORT"] == "8080"
    assert [p["containerPort"] for p in c["ports"]] == [8080]
    assert env["BATCHSERVE_MODEL_REPOSITORY"] == "/mnt/models"  # the storage initializer's place
    # Knative probes the serving port only: readiness there, 503 until the models are loaded.
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/tmp"}


def test_inference_services_use_the_batchserve_runtime_over_v2() -> None:
    runtime = one("ServingRuntime", KSERVE)
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    for service in documents(KSERVE / "inferenceservice.yaml"):
        model = service["spec"]["predictor"]["model"]
        assert model["runtime"] == runtime["metadata"]["name"]
        assert model["modelFormat"]["name"] in formats
        assert model["protocolVersion"] == "v2"
        assert model["storageUri"]
