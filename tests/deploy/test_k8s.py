"""deploy/k8s: every overlay rendered by the real ``kubectl kustomize``, every object validated
against the Kubernetes JSON schemas offline, and the invariants that tie the manifests to the
app and the image.

Schemas: the ``kubernetes-validate`` package ships the OpenAPI-derived JSON schemas of each
Kubernetes release; the strict variant rejects unknown fields, so a misspelt key fails. Objects
are checked against the oldest release the manifests rely on (1.30: ``matchLabelKeys`` in
topology spread constraints, beta and on by default since 1.27) and the newest the package
knows. The ServiceMonitor is a custom resource that no Kubernetes schema describes; it is
checked against :data:`SERVICE_MONITOR_SCHEMA`, the subset of the prometheus-operator CRD
``monitoring.coreos.com/v1`` (operator 0.84) that the manifest uses, with the CRD's own types
and duration pattern and no unknown field allowed.
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from digits_client.cli import ENV_API_KEY, EXIT_USAGE

from app.settings import Settings
from harness.bodies import digit_images, png
from harness.servers import RunningServer
from tests.deploy.conftest import REPO, is_setting
from tests.deploy.formats import Dockerfile, nginx_size

K8S = REPO / "deploy" / "k8s"
#: Environment variables the launcher reads besides the DIGITS_* settings.
LAUNCHER_VARIABLES = {"WEB_CONCURRENCY"}
#: Settings each model version calibrates for itself (its reader.json); the manifests leave
#: them unset so that every version keeps its own.
PER_VERSION_SETTINGS = {"DIGITS_REVIEW_THRESHOLD"}
#: The API groups every Kubernetes cluster serves: an object of another group needs a CRD.
BUILT_IN_GROUPS = {"", "apps", "autoscaling", "policy", "networking.k8s.io", "batch"}
ALL_OVERLAYS = sorted(
    p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file()
)
#: Overlays that hold a Job beside the production overlay's service, not the service itself.
JOB_OVERLAYS = ["bulk-read"]
#: The overlays that deploy the service (its Deployment, Service, autoscaler...).
OVERLAYS = [name for name in ALL_OVERLAYS if name not in JOB_OVERLAYS]
#: The name of the service's own objects (Deployment, Service, NetworkPolicy...).
API = "mnist-digits"
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
NAMESPACED_KINDS = {
    "ConfigMap",
    "Deployment",
    "HorizontalPodAutoscaler",
    "Ingress",
    "Job",
    "NetworkPolicy",
    "PersistentVolumeClaim",
    "PodDisruptionBudget",
    "Secret",
    "Service",
    "ServiceMonitor",
    "StatefulSet",
}
_DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": _LABELS,
                "annotations": _LABELS,
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": _LABELS},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "jobLabel": {"type": "string"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                            "honorLabels": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: deploy/k8s cannot be rendered")
    return kubectl


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize <directory>`` prints."""
    result = subprocess.run(
        [_kubectl(), "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    name: str = request.param
    return name, render(K8S / "overlays" / name)


@pytest.fixture(scope="module", params=ALL_OVERLAYS)
def any_overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    """Every overlay, the Job overlays included."""
    name: str = request.param
    return name, render(K8S / "overlays" / name)


def objects(rendered: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in rendered if obj["kind"] == kind]


def one(rendered: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (named ``name``, when given)."""
    (obj,) = [o for o in objects(rendered, kind) if name is None or o["metadata"]["name"] == name]
    return obj


def api_container(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def settings_map(rendered: list[dict[str, Any]]) -> dict[str, str]:
    """The data of the ConfigMap the api container takes its settings from."""
    (source,) = api_container(rendered)["envFrom"]
    (config_map,) = [
        c
        for c in objects(rendered, "ConfigMap")
        if c["metadata"]["name"] == source["configMapRef"]["name"]
    ]
    data: dict[str, str] = config_map["data"]
    return data


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a matchLabels selector (the only form used here) selects these labels."""
    assert set(selector) <= {"matchLabels"}, selector
    wanted = selector.get("matchLabels", {})
    return bool(wanted) and all(labels.get(key) == value for key, value in wanted.items())


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (``500m``, ``2``, ``1Gi``) as a number."""
    suffixes = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match is not None, value
    return float(match[1]) * suffixes.get(match[2], 1) if match[2] else float(match[1])


def _option(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} missing from {argv}"
    return argv[argv.index(name) + 1]


@pytest.fixture(scope="module")
def image_cmd(dockerfile: Dockerfile) -> list[str]:
    cmd = dockerfile.final.last("CMD")
    assert cmd is not None
    argv = cmd.exec_form()
    assert argv is not None
    return argv


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any network connection attempted from this process fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access during an offline check: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ----------------------------------------------------------------------------- rendering, schemas


def test_base_and_the_named_overlays_exist() -> None:
    assert (K8S / "base" / "kustomization.yaml").is_file()
    assert {"dev", "production"} <= set(OVERLAYS)
    base = render(K8S / "base")
    assert {obj["kind"] for obj in base} == {
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
    }


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.usefixtures("offline")
def test_every_object_is_valid_against_its_schema(
    any_overlay: tuple[str, list[dict[str, Any]]], version: str
) -> None:
    name, rendered = any_overlay
    for obj in rendered:
        label = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{label} is not valid Kubernetes {version}: {error.message}")


@pytest.mark.usefixtures("offline")
def test_the_validators_reject_a_misspelt_field() -> None:
    rendered = render(K8S / "overlays" / "service-monitor")
    deployment = one(rendered, "Deployment")
    api_container(rendered)["readinesProbe"] = {"httpGet": {"path": "/"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    monitor = one(rendered, "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    del monitor["spec"]["endpoints"][0]["intervall"]
    monitor["spec"]["endpoints"][0]["interval"] = "30 seconds"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)


def test_everything_lands_in_the_overlays_namespace(
    any_overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    name, rendered = any_overlay
    # The overlay's own Namespace, or (a Job overlay) the namespace of the service it reads.
    namespaces = [obj["metadata"]["name"] for obj in objects(rendered, "Namespace")]
    if name in JOB_OVERLAYS:
        kustomization = yaml.safe_load((K8S / "overlays" / name / "kustomization.yaml").read_text())
        production = render(K8S / "overlays" / "production")
        namespaces += [obj["metadata"]["name"] for obj in objects(production, "Namespace")]
        assert kustomization["namespace"] in namespaces
    (namespace,) = set(namespaces)
    for obj in rendered:
        if obj["kind"] != "Namespace":
            assert obj["kind"] in NAMESPACED_KINDS, f"{name}: unexpected kind {obj['kind']}"
            assert obj["metadata"].get("namespace") == namespace, f"{name}: {obj['kind']}"


# ----------------------------------------------------------------------------- the Deployment


def test_probes_name_the_apps_health_routes_on_the_container_port(
    overlay: tuple[str, list[dict[str, Any]]],
    app_routes: dict[str, set[str]],
    image_cmd: list[str],
    dockerfile: Dockerfile,
) -> None:
    _, rendered = overlay
    container = api_container(rendered)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    expose = dockerfile.final.last("EXPOSE")
    assert expose is not None
    grpc_port = int(settings_map(rendered)["DIGITS_GRPC_PORT"])
    assert ports == {"http": int(_option(image_cmd, "--port")), "grpc": grpc_port}
    assert [str(ports["http"])] == expose.words()
    assert "command" not in container, "the image's CMD (uvicorn, graceful shutdown) runs"
    assert "args" not in container
    expected = {
        "startupProbe": "/health/live",
        "livenessProbe": "/health/live",
        "readinessProbe": "/health/ready",
    }
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert "GET" in app_routes[path], f"{probe}: the app has no GET {path}"
        assert ports.get(get["port"], get["port"]) == ports["http"], probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60, (
        "uvicorn answers nothing until the model is loaded: a minute at least before liveness"
    )


def test_the_grpc_door_is_open_on_its_port_in_the_pod_service_and_policy(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    name, rendered = overlay
    settings = settings_map(rendered)
    grpc_port = int(settings["DIGITS_GRPC_PORT"])
    assert grpc_port > 0, f"{name}: the Open Inference Protocol's gRPC door is on"
    assert settings["DIGITS_GRPC_HOST"] == "0.0.0.0", "reachable from other pods, not loopback"
    container_ports = {p["name"]: p["containerPort"] for p in api_container(rendered)["ports"]}
    assert container_ports["grpc"] == grpc_port
    (service_port,) = [
        p for p in one(rendered, "Service", API)["spec"]["ports"] if p["name"] == "grpc"
    ]
    assert service_port["targetPort"] == "grpc"
    assert service_port["appProtocol"] == "kubernetes.io/h2c", "gRPC is HTTP/2 in clear text"
    policy = one(rendered, "NetworkPolicy", API)
    for rule in policy["spec"]["ingress"]:
        assert {p["port"] for p in rule["ports"]} == {"http", "grpc"}, f"{name}: {rule}"


def test_no_configmap_value_overrides_a_versions_calibration(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    # Each version carries its own review threshold (its reader.json); a value here would
    # replace every version's with one number. The operator sets it only on purpose.
    name, rendered = overlay
    for config_map in objects(rendered, "ConfigMap"):
        assert PER_VERSION_SETTINGS.isdisjoint(config_map.get("data", {})), (
            f"{name}: {config_map['metadata']['name']} overrides a calibrated setting"
        )


def test_resources_requested_and_limited(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, rendered = overlay
    resources = api_container(rendered)["resources"]
    for resource in ("cpu", "memory"):
        request = quantity(resources["requests"][resource])
        limit = quantity(resources["limits"][resource])
        assert 0 < request <= limit, resource
    # The service holds about 760 MiB once ready (docs/deployment.md, compose): a limit below a
    # GiB kills it.
    assert quantity(resources["limits"]["memory"]) >= 2**30


def test_runs_as_the_images_non_root_user_with_nothing_extra(
    overlay: tuple[str, list[dict[str, Any]]], dockerfile: Dockerfile
) -> None:
    _, rendered = overlay
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    user = dockerfile.final.last("USER")
    assert user is not None
    uid, _, gid = user.arguments.partition(":")
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True
    assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid))
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    container = api_container(rendered)["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    assert container.get("privileged", False) is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert container.get("runAsUser", int(uid)) == int(uid)
    # The root filesystem is read-only: uploads spool to an emptyDir on /tmp.
    mounts = {m["mountPath"]: m["name"] for m in api_container(rendered)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_one_worker_per_pod_so_pods_scale_out(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, rendered = overlay
    env = {v["name"]: v.get("value") for v in api_container(rendered).get("env", [])}
    # Without it the launcher starts one worker per core of the CPU limit, each loading its own
    # TensorFlow, and the pod's memory limit would have to grow with its CPU limit.
    assert env.get("WEB_CONCURRENCY") == "1"


def test_grace_period_outlasts_the_servers_graceful_shutdown(
    overlay: tuple[str, list[dict[str, Any]]], dockerfile: Dockerfile
) -> None:
    _, rendered = overlay
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    # The launcher reads its shutdown timeout from the settings: the ConfigMap's value, else
    # the image's ENV, else the Settings default.
    (source,) = api_container(rendered)["envFrom"]
    (config_map,) = [
        c
        for c in objects(rendered, "ConfigMap")
        if c["metadata"]["name"] == source["configMapRef"]["name"]
    ]
    key = "DIGITS_GRACEFUL_SHUTDOWN_SECONDS"
    default = Settings.model_fields["graceful_shutdown_seconds"].default
    shutdown = int(config_map["data"].get(key, dockerfile.final.env().get(key, default)))
    pre_stop = api_container(rendered).get("lifecycle", {}).get("preStop")
    pause = 0
    if pre_stop is not None:
        argv = pre_stop["exec"]["command"]
        assert argv[0] == "sleep", shlex.join(argv)
        pause = int(argv[1])
    assert pod["terminationGracePeriodSeconds"] > pause + shutdown, (
        f"SIGKILL would cut requests in flight: grace {pod['terminationGracePeriodSeconds']} s, "
        f"preStop {pause} s + graceful shutdown {shutdown} s"
    )


def test_replicas_spread_over_nodes_and_zones(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, rendered = overlay
    template = one(rendered, "Deployment")["spec"]["template"]
    spread = template["spec"]["topologySpreadConstraints"]
    keys = {constraint["topologyKey"] for constraint in spread}
    assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for constraint in spread:
        assert selects(constraint["labelSelector"], template["metadata"]["labels"])


def test_settings_come_from_a_configmap_of_real_settings(
    overlay: tuple[str, list[dict[str, Any]]], dockerfile: Dockerfile
) -> None:
    name, rendered = overlay
    container = api_container(rendered)
    (source,) = container["envFrom"]
    (config_map,) = [
        c
        for c in objects(rendered, "ConfigMap")
        if c["metadata"]["name"] == source["configMapRef"]["name"]
    ]
    data: dict[str, str] = config_map["data"]
    fields = {}
    for key, value in data.items():
        assert key.startswith("DIGITS_"), f"{name}: {key} is not a service setting"
        field = key.removeprefix("DIGITS_").lower()
        assert is_setting(field), f"{name}: {key} is no field of Settings"
        fields[field] = value
    Settings(**fields)  # every value parses as its field's type and bounds
    env = container.get("env", [])
    # A variable only other values refer to ($(NAME), expanded by Kubernetes) reaches no one.
    referenced = {m for v in env for m in re.findall(r"\$\((\w+)\)", v.get("value", ""))}
    for variable in env:
        if variable["name"] in LAUNCHER_VARIABLES | referenced:
            continue
        assert variable["name"].startswith("DIGITS_"), f"{name}: {variable['name']}"
        assert is_setting(variable["name"].removeprefix("DIGITS_").lower()), variable["name"]
    models_dir = data["DIGITS_MODELS_DIR"]
    assert models_dir == dockerfile.final.env()["DIGITS_MODELS_DIR"]
    mounted = [m for m in container["volumeMounts"] if m["mountPath"] == models_dir]
    if mounted:
        # Models from a volume: read-only, on a claim of this overlay, and polled for versions.
        (mount,) = mounted
        assert mount["readOnly"] is True
        pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        claim = volume["persistentVolumeClaim"]["claimName"]
        assert claim in {c["metadata"]["name"] for c in objects(rendered, "PersistentVolumeClaim")}
        assert float(data["DIGITS_MODEL_POLL_SECONDS"]) > 0, "a new version must be picked up"
    else:
        # Models from the image: the bundled model sits at that path.
        assert any(p.name.isdigit() for p in (REPO / "models" / "mnist").iterdir())


def test_models_from_a_volume_is_one_of_the_overlays() -> None:
    overlays_with_volume = [
        name
        for name in OVERLAYS
        if any(
            m["mountPath"] == "/app/models/mnist"
            for m in api_container(render(K8S / "overlays" / name)).get("volumeMounts", [])
        )
    ]
    assert overlays_with_volume == ["models-volume"]


# ----------------------------------------------------------------------------- around the pods


def test_service_autoscaler_budget_and_policy_point_at_the_pods(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    name, rendered = overlay
    deployment = one(rendered, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"], pod_labels)
    service = one(rendered, "Service", API)
    assert all(pod_labels.get(k) == v for k, v in service["spec"]["selector"].items())
    container_ports = {p["name"]: p["containerPort"] for p in api_container(rendered)["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in container_ports, port
    budget = one(rendered, "PodDisruptionBudget")
    assert selects(budget["spec"]["selector"], pod_labels)
    assert budget["spec"]["maxUnavailable"] == 1, "a drain never blocks, one pod at a time"
    policy = one(rendered, "NetworkPolicy", API)
    assert selects(policy["spec"]["podSelector"], pod_labels)
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed <= set(container_ports) | set(container_ports.values()), allowed
    assert allowed, f"{name}: nothing may reach the service"
    autoscalers = objects(rendered, "HorizontalPodAutoscaler")
    if autoscalers:
        (hpa,) = autoscalers
        assert hpa["apiVersion"] == "autoscaling/v2"
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
        assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    else:
        assert deployment["spec"]["replicas"] >= 1


def test_dev_is_one_replica_and_production_autoscales_without_the_operator() -> None:
    dev = render(K8S / "overlays" / "dev")
    assert one(dev, "Deployment")["spec"]["replicas"] == 1
    assert not objects(dev, "HorizontalPodAutoscaler")
    assert not objects(dev, "ServiceMonitor"), "no Prometheus operator assumed on a laptop"

    production = render(K8S / "overlays" / "production")
    assert one(production, "HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2
    image = api_container(production)["image"]
    assert ":" in image.rsplit("/", 1)[-1], "production names a tag"
    assert not image.endswith(":latest"), "production names a fixed tag"


def _api_group(obj: dict[str, Any]) -> str:
    api_version: str = obj["apiVersion"]
    return api_version.rpartition("/")[0]


def test_only_the_service_monitor_overlay_needs_a_custom_resource_definition(
    any_overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    # `kubectl apply -k` fails on a cluster without the CRD of any object it holds: every
    # overlay but the one that asks for the Prometheus operator applies on a bare cluster.
    name, rendered = any_overlay
    custom = sorted({obj["kind"] for obj in rendered if _api_group(obj) not in BUILT_IN_GROUPS})
    assert custom == (["ServiceMonitor"] if name == "service-monitor" else []), name


def test_the_service_monitor_overlay_is_production_scraped_by_the_operator(
    app_routes: dict[str, set[str]],
) -> None:
    production = render(K8S / "overlays" / "production")
    monitored = render(K8S / "overlays" / "service-monitor")
    assert [o for o in monitored if o["kind"] != "ServiceMonitor"] == production
    monitor = one(monitored, "ServiceMonitor")
    service = one(monitored, "Service", API)
    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    service_ports = {port["name"] for port in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports
        assert "GET" in app_routes[endpoint["path"]]


def test_the_ingress_overlay_reaches_both_doors_with_room_for_an_upload() -> None:
    rendered = render(K8S / "overlays" / "ingress")
    service = one(rendered, "Service", API)
    ports = {port["name"] for port in service["spec"]["ports"]}
    backends = {}
    for ingress in objects(rendered, "Ingress"):
        spec = ingress["spec"]
        assert spec["ingressClassName"] == "nginx", "the annotations are ingress-nginx's"
        hosts = {host for tls in spec["tls"] for host in tls["hosts"]}
        for rule in spec["rules"]:
            assert rule["host"] in hosts, "served over TLS"
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] == service["metadata"]["name"]
                assert backend["port"]["name"] in ports
                backends[backend["port"]["name"]] = ingress["metadata"].get("annotations", {})
        body = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
        assert nginx_size(body) > Settings().max_upload_bytes, "the service answers oversize"
    assert set(backends) == {"http", "grpc"}
    assert backends["grpc"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    retry = backends["http"]["nginx.ingress.kubernetes.io/proxy-next-upstream"].split()
    assert "non_idempotent" not in retry, "an upload is never replayed on another pod"
    # The controller's namespace is one the production NetworkPolicy admits.
    (rule,) = one(rendered, "NetworkPolicy", API)["spec"]["ingress"]
    admitted = [
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for peer in rule["from"]
        if "namespaceSelector" in peer
    ]
    assert "ingress-nginx" in admitted


# ----------------------------------------------------------------------------- the models volume


def _seed_script(rendered: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The models-volume overlay's seed initContainer and the script it runs."""
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    script_path = init["command"][-1]
    directory, _, filename = script_path.rpartition("/")
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[directory])
    (config_map,) = [
        c
        for c in objects(rendered, "ConfigMap")
        if c["metadata"]["name"] == volume["configMap"]["name"]
    ]
    return init, config_map["data"][filename]


def test_the_models_volume_is_seeded_by_the_services_own_image() -> None:
    rendered = render(K8S / "overlays" / "models-volume")
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    init, _ = _seed_script(rendered)
    api = api_container(rendered)
    assert init["image"] == api["image"], "the image's bundled models, at the overlay's tag"
    assert init["command"][0] == "sh"
    env = {v["name"]: v["value"] for v in init["env"]}
    assert env["SEED_FROM"] == settings_map(rendered)["DIGITS_MODELS_DIR"]
    (models,) = [m for m in api["volumeMounts"] if m["mountPath"] == env["SEED_FROM"]]
    assert models["readOnly"] is True, "the service never writes models"
    (seed,) = [m for m in init["volumeMounts"] if m["mountPath"] == env["SEED_INTO"]]
    assert seed["name"] == models["name"]
    assert not seed.get("readOnly", False), "only the seed container writes the volume"
    (volume,) = [v for v in pod["volumes"] if v["name"] == models["name"]]
    assert "readOnly" not in volume["persistentVolumeClaim"], "it would make every mount read-only"
    security = init["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert quantity(init["resources"]["limits"]["memory"]) > 0


def _run_seed(script: str, source: Path, volume: Path) -> subprocess.CompletedProcess[str]:
    shell = shutil.which("sh")
    if shell is None:
        pytest.skip("no POSIX shell")
    return subprocess.run(
        [shell, "-c", script],
        env={"PATH": os.environ["PATH"], "SEED_FROM": str(source), "SEED_INTO": str(volume)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_the_seed_script_fills_an_empty_volume_with_whole_versions(tmp_path: Path) -> None:
    _, script = _seed_script(render(K8S / "overlays" / "models-volume"))
    bundled = REPO / "models" / "mnist"
    volume = tmp_path / "volume"
    volume.mkdir()
    result = _run_seed(script, bundled, volume)
    assert result.returncode == 0, result.stderr
    versions = sorted(p.name for p in bundled.iterdir() if p.is_dir() and p.name.isdigit())
    assert versions
    assert sorted(p.name for p in volume.iterdir()) == versions, "no temporary directory left"
    for version in versions:
        assert _tree(volume / version) == _tree(bundled / version), version
        assert f"copied version {version}" in result.stdout
    # Atomically: each version is renamed into place from a hidden directory on the volume.
    assert re.search(r"cp -R .*\$temporary", script)
    assert re.search(r"mv -T .*\$temporary", script)


def test_the_seed_script_leaves_a_volume_that_holds_a_version(tmp_path: Path) -> None:
    _, script = _seed_script(render(K8S / "overlays" / "models-volume"))
    volume = tmp_path / "volume"
    (volume / "7").mkdir(parents=True)
    (volume / "7" / "saved_model.pb").write_bytes(b"seven")
    result = _run_seed(script, REPO / "models" / "mnist", volume)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in volume.iterdir()) == ["7"], "a removed version stays removed"
    assert "holds version 7 already" in result.stdout


def test_the_seed_script_fails_when_there_is_nothing_to_copy(tmp_path: Path) -> None:
    _, script = _seed_script(render(K8S / "overlays" / "models-volume"))
    source, volume = tmp_path / "image", tmp_path / "volume"
    (source / ".tmp-half").mkdir(parents=True)
    volume.mkdir()
    result = _run_seed(script, source, volume)
    assert result.returncode != 0, "a pod that would serve nothing does not start"
    assert list(volume.iterdir()) == []


# ----------------------------------------------------------------------------- the review queue


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in container.get("env", [])}


def _queue_on(rendered: list[dict[str, Any]]) -> bool:
    value = settings_map(rendered).get("DIGITS_REVIEW_QUEUE", "true")
    return value.lower() not in {"false", "0", "no", "off"}


def test_the_service_keeps_its_state_on_a_writable_volume_of_the_pod(
    overlay: tuple[str, list[dict[str, Any]]], dockerfile: Dockerfile
) -> None:
    # The root filesystem is read-only; the queue's SQLite file (when no shared database is
    # named) lives in DIGITS_DATA_DIR, the image's /app/data.
    name, rendered = overlay
    data_dir = dockerfile.final.env()["DIGITS_DATA_DIR"]
    container = api_container(rendered)
    assert settings_map(rendered).get("DIGITS_DATA_DIR", data_dir) == data_dir
    assert "value" not in _env(container).get("DIGITS_DATA_DIR", {}), "the image's path"
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == data_dir]
    assert not mount.get("readOnly", False), f"{name}: the service writes its queue there"
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert quantity(volume["emptyDir"]["sizeLimit"]) >= 2**30, "bounded, and room for images"
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"], (
        "the emptyDir is writable by the service's group"
    )


def test_replicas_share_one_queue_or_keep_none(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    # Each pod's emptyDir is its own: several replicas with a SQLite file each would split the
    # queue between them (a reviewer's claim and submit could reach different pods) and lose
    # it with every pod. An overlay that may run several pods names one shared database or
    # turns the queue off.
    name, rendered = overlay
    deployment = one(rendered, "Deployment")
    autoscalers = objects(rendered, "HorizontalPodAutoscaler")
    most = autoscalers[0]["spec"]["maxReplicas"] if autoscalers else deployment["spec"]["replicas"]
    url = _env(api_container(rendered)).get("DIGITS_REVIEW_DATABASE_URL", {}).get("value")
    if most > 1 and _queue_on(rendered):
        assert url is not None, f"{name}: {most} replicas, each with a queue of its own"
        assert urlsplit(url).scheme == "postgresql+psycopg"
    if name == "dev":
        assert most == 1
        assert _queue_on(rendered), "one pod: its SQLite file is the queue"
        assert url is None
    if name == "postgres":
        assert _queue_on(rendered)


def test_the_postgres_overlay_points_every_replica_at_its_database(
    compose: dict[str, Any],
) -> None:
    production = render(K8S / "overlays" / "production")
    rendered = render(K8S / "overlays" / "postgres")
    assert {o["kind"] for o in rendered} - {o["kind"] for o in production} == {
        "StatefulSet",
        "Secret",
    }
    statefulset = one(rendered, "StatefulSet")
    pod = statefulset["spec"]["template"]
    (postgres,) = pod["spec"]["containers"]
    postgres_env = _env(postgres)
    api_env = _env(api_container(rendered))

    # The URL: the headless Service in front of the StatefulSet, its user and database.
    url = urlsplit(api_env["DIGITS_REVIEW_DATABASE_URL"]["value"])
    assert url.scheme == "postgresql+psycopg"
    service = one(rendered, "Service", url.hostname)
    assert service["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["serviceName"] == url.hostname
    assert all(
        pod["metadata"]["labels"].get(k) == v for k, v in service["spec"]["selector"].items()
    )
    (port,) = service["spec"]["ports"]
    assert url.port == port["port"]
    container_ports = {p["name"]: p["containerPort"] for p in postgres["ports"]}
    assert container_ports[port["targetPort"]] == 5432
    assert url.username == postgres_env["POSTGRES_USER"]["value"]
    assert url.path == "/" + postgres_env["POSTGRES_DB"]["value"]

    # The password: one Secret key, read by the database and expanded into the api's URL.
    assert url.password == "$(POSTGRES_PASSWORD)"
    names = list(api_env)
    assert names.index("POSTGRES_PASSWORD") < names.index("DIGITS_REVIEW_DATABASE_URL"), (
        "Kubernetes expands $(NAME) only from variables defined before"
    )
    reference = api_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert reference == postgres_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    secret = one(rendered, "Secret", reference["name"])
    assert reference["key"] in secret["data"]
    assert "optional" not in reference, "no database without its password"

    # The same image as the compose file's postgres profile, probed over TCP.
    assert postgres["image"] == compose["services"]["postgres"]["image"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        argv = postgres[probe]["exec"]["command"]
        assert argv[0] == "pg_isready"
        assert _option(argv, "-h") == "127.0.0.1", "the socket answers during initialisation"
        assert _option(argv, "-U") == url.username
        assert _option(argv, "-d") == url.path[1:]

    # Its data on the claim template, in a directory of its own inside it.
    (template,) = statefulset["spec"]["volumeClaimTemplates"]
    (data,) = [m for m in postgres["volumeMounts"] if m["name"] == template["metadata"]["name"]]
    pgdata = postgres_env["PGDATA"]["value"]
    assert pgdata.startswith(data["mountPath"] + "/"), "initdb wants an empty directory"
    assert template["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert quantity(template["spec"]["resources"]["requests"]["storage"]) >= 2**30

    # The restricted Pod Security Standard of the production namespace.
    context = pod["spec"]["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == 999, "the image's postgres user"
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    security = postgres["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in postgres["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    for writable in ("/var/run/postgresql", "/tmp"):
        assert "emptyDir" in volumes[mounts[writable]], writable
    limits = postgres["resources"]["limits"]
    assert quantity(limits["memory"]) >= quantity(postgres["resources"]["requests"]["memory"])


def test_only_the_api_reaches_the_database_and_the_api_may() -> None:
    rendered = render(K8S / "overlays" / "postgres")
    pod_labels = one(rendered, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    api_labels = one(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"]
    api_policy = one(rendered, "NetworkPolicy", API)
    to_database = [
        rule
        for rule in api_policy["spec"]["egress"]
        if any(selects(peer["podSelector"], pod_labels) for peer in rule.get("to", []))
    ]
    assert [[p["port"] for p in rule["ports"]] for rule in to_database] == [[5432]]
    dns = [rule for rule in api_policy["spec"]["egress"] if "to" not in rule]
    assert {p["port"] for rule in dns for p in rule["ports"]} == {53}, "DNS still allowed"
    (database_policy,) = [
        p
        for p in objects(rendered, "NetworkPolicy")
        if selects(p["spec"]["podSelector"], pod_labels)
    ]
    assert set(database_policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert database_policy["spec"]["egress"] == [], "the database calls nothing"
    (rule,) = database_policy["spec"]["ingress"]
    assert all(selects(peer["podSelector"], api_labels) for peer in rule["from"])
    assert not selects(rule["from"][0]["podSelector"], {"app.kubernetes.io/name": "mnist-digits"})
    assert [p["port"] for p in rule["ports"]] == ["postgres"]


def test_the_postgres_password_placeholder_is_the_one_the_docs_tell_to_replace() -> None:
    kustomization = yaml.safe_load(
        (K8S / "components" / "postgres" / "kustomization.yaml").read_text()
    )
    (generator,) = kustomization["secretGenerator"]
    (literal,) = generator["literals"]
    key, _, placeholder = literal.partition("=")
    assert key == "password"
    assert re.fullmatch(r"[A-Za-z0-9._-]+", placeholder), "URL-safe, as the docs ask"
    assert placeholder in (REPO / "docs" / "deployment.md").read_text()


# ----------------------------------------------------------------------------- bulk reading

BULK_READ = K8S / "overlays" / "bulk-read"


def _bulk_job(rendered: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The bulk-read Job and its one container."""
    job = one(rendered, "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return job, container


def test_the_bulk_read_overlay_is_the_job_alone_beside_the_service() -> None:
    # Applying, deleting and running it again must leave the service alone.
    rendered = render(BULK_READ)
    assert sorted(o["kind"] for o in rendered) == [
        "Job",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "PersistentVolumeClaim",
    ]
    production = render(K8S / "overlays" / "production")
    (namespace,) = objects(production, "Namespace")
    assert {o["metadata"]["namespace"] for o in rendered} == {namespace["metadata"]["name"]}


def test_the_bulk_read_job_reads_one_shard_per_index_through_the_service(
    dockerfile: Dockerfile,
) -> None:
    rendered = render(BULK_READ)
    job, container = _bulk_job(rendered)
    spec = job["spec"]
    pod = spec["template"]["spec"]
    env = _env(container)
    assert spec["completionMode"] == "Indexed"
    assert int(env["SHARDS"]["value"]) == spec["completions"], "one shard per index"
    assert 1 <= spec["parallelism"] <= spec["completions"]
    index = env["SHARD"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert index == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    args = container["args"]
    assert args[0] == "read"
    assert _option(args, "--shard") == "$(SHARD)/$(SHARDS)"
    assert "$(SHARD)" in _option(args, "--out"), "one results file per shard"
    assert "--resume" in args, "a retried shard goes on where its file stops"
    assert "--no-progress" in args, "no progress bar in a pod's log"

    # The image: the client stage of the Dockerfile, whose entrypoint is `digits`.
    client = dockerfile.stage("client")
    entrypoint = client.last("ENTRYPOINT")
    assert entrypoint is not None
    assert entrypoint.exec_form() == ["digits"]
    assert "command" not in container
    image = container["image"]
    assert image.rsplit("/", 1)[-1].split(":")[0] == "mnist-digits-client"
    assert not image.endswith(":latest"), "a fixed tag, as the service's"

    # The service: the production overlay's Service, by name, on its http port.
    production = render(K8S / "overlays" / "production")
    service = one(production, "Service", API)
    url = urlsplit(_option(args, "--url"))
    assert url.hostname == service["metadata"]["name"]
    (http,) = [p for p in service["spec"]["ports"] if p["name"] == "http"]
    assert (url.port or 80) == http["port"]
    key = env[ENV_API_KEY]["valueFrom"]["secretKeyRef"]
    assert key == _env(api_container(production))["DIGITS_API_KEY"]["valueFrom"]["secretKeyRef"]

    # Its volumes: the manifest read-only, the results on a claim of this overlay.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {c["metadata"]["name"]: c for c in objects(rendered, "PersistentVolumeClaim")}
    manifest, out = Path(args[1]), Path(_option(args, "--out"))
    assert mounts[str(manifest.parent)]["readOnly"] is True
    assert not mounts[str(out.parent)].get("readOnly", False)
    for path in (manifest, out):
        volume = volumes[mounts[str(path.parent)]["name"]]
        claim = claims[volume["persistentVolumeClaim"]["claimName"]]
        assert "ReadWriteMany" in claim["spec"]["accessModes"], "pods on several nodes at once"

    # Failures: per shard, a usage error not retried, restarts by the Job, not the kubelet.
    assert pod["restartPolicy"] == "Never"
    assert spec["backoffLimitPerIndex"] >= 1
    (usage,) = [r for r in spec["podFailurePolicy"]["rules"] if r["action"] == "FailIndex"]
    assert usage["onExitCodes"]["values"] == [EXIT_USAGE]
    assert usage["onExitCodes"]["containerName"] == container["name"]

    # The client image's non-root user, the restricted Pod Security Standard.
    user = client.last("USER")
    assert user is not None
    context = pod["securityContext"]
    assert f"{context['runAsUser']}:{context['runAsGroup']}" == user.arguments
    assert context["runAsNonRoot"] is True
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert quantity(container["resources"]["limits"]["memory"]) > 0


def test_the_bulk_read_pods_reach_the_api_and_dns_only() -> None:
    rendered = render(BULK_READ)
    job, _ = _bulk_job(rendered)
    labels = job["spec"]["template"]["metadata"]["labels"]
    (policy,) = objects(rendered, "NetworkPolicy")
    assert selects(policy["spec"]["podSelector"], labels)
    assert policy["spec"]["ingress"] == []
    production = render(K8S / "overlays" / "production")
    api_labels = one(production, "Deployment")["spec"]["template"]["metadata"]["labels"]
    http = {p["name"]: p["containerPort"] for p in api_container(production)["ports"]}["http"]
    to_api = [r for r in policy["spec"]["egress"] if "to" in r]
    assert all(selects(peer["podSelector"], api_labels) for r in to_api for peer in r["to"])
    assert [[p["port"] for p in r["ports"]] for r in to_api] == [[http]]
    dns = [r for r in policy["spec"]["egress"] if "to" not in r]
    assert {p["port"] for r in dns for p in r["ports"]} == {53}


def _as_run_here(argument: str, mounts: dict[str, Path], url: str, env: dict[str, str]) -> str:
    """One of the Job's arguments as the pod would see it, with its mounts and the service
    moved to this machine."""
    for name, value in env.items():
        argument = argument.replace(f"$({name})", value)
    if argument.startswith("http://"):
        return url
    for mount, here in mounts.items():
        if argument.startswith(mount + "/"):
            return str(here / argument.removeprefix(mount + "/"))
    return argument


@pytest.mark.slow
def test_the_bulk_read_job_reads_every_item_once_against_the_real_service(
    tmp_path: Path,
) -> None:
    # The Job's own arguments, for every index, run by the client against a real server: the
    # shards' results files hold every item of the manifest exactly once, and a retried shard
    # (the same arguments again) adds nothing.
    job, container = _bulk_job(render(BULK_READ))
    shards = job["spec"]["completions"]
    mounts = {m["mountPath"]: tmp_path / m["name"] for m in container["volumeMounts"]}
    for here in mounts.values():
        here.mkdir()
    args = container["args"]
    manifest = Path(_as_run_here(args[1], mounts, "", {}))
    images, _ = digit_images(3 * shards)
    ids = []
    with manifest.open("w") as out:
        out.write("id,path\n")
        for number, image in enumerate(images):
            (manifest.parent / f"scan-{number}.png").write_bytes(png(image))
            ids.append(f"item-{number}")
            out.write(f"item-{number},scan-{number}.png\n")
    server = RunningServer.start(REPO / "models" / "mnist", tmp_path / "server.log")
    try:
        for index in range(shards):
            values = {"SHARD": str(index), "SHARDS": _env(container)["SHARDS"]["value"]}
            argv = [_as_run_here(a, mounts, server.url, values) for a in args]
            for attempt in range(2):
                result = subprocess.run(
                    [sys.executable, "-m", "digits_client", *argv],
                    capture_output=True,
                    text=True,
                    timeout=120,
                    env={k: v for k, v in os.environ.items() if not k.startswith("DIGITS_")},
                    check=False,
                )
                assert result.returncode == 0, f"shard {index}, run {attempt}: {result.stderr}"
    finally:
        server.stop()
    rows = []
    for index in range(shards):
        out = Path(_as_run_here(_option(args, "--out"), mounts, "", {"SHARD": str(index)}))
        with out.open() as part:
            rows += list(csv.DictReader(part))
    assert sorted(row["id"] for row in rows) == sorted(ids), "every item once"
    assert all(row["error"] == "" and row["digits"].isdigit() for row in rows), rows
