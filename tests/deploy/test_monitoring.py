"""The `monitoring` compose profile: Prometheus finds every api replica, Grafana is provisioned
with it as data source and with a dashboard whose every query names only metrics the service
really exports (scraped from /metrics of the app, parsed with prometheus_client's parser)."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.settings import Settings
from tests.deploy.conftest import REPO

MONITORING = REPO / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "mnist-digits.json"
PROFILE = "monitoring"

# Series Prometheus makes itself for every target; a dashboard may use them too.
PROMETHEUS_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
# PromQL functions, aggregations and keywords (https://prometheus.io/docs/prometheus/latest/
# querying/functions/ and operators/), as far as a dashboard may use them.
PROMQL_WORDS = frozenset(
    {
        "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
        "count_values", "group", "rate", "irate", "increase", "delta", "idelta", "deriv",
        "histogram_quantile", "histogram_count", "histogram_sum", "histogram_fraction",
        "abs", "ceil", "floor", "round", "clamp", "clamp_min", "clamp_max", "vector", "scalar",
        "time", "timestamp", "absent", "absent_over_time", "changes", "resets", "label_replace",
        "label_join", "sort", "sort_desc", "avg_over_time", "min_over_time", "max_over_time",
        "sum_over_time", "count_over_time", "last_over_time", "quantile_over_time", "and", "or",
        "unless", "bool", "inf", "nan", "group_left", "group_right",
    }
)  # fmt: skip
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, ranges left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # label values
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    text = _GROUPING.sub("", text)
    text = re.sub(r"\boffset\s+-?\w+", "", text)
    text = re.sub(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b", "", text)  # numbers
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return words - PROMQL_WORDS


def test_metric_names_finds_metrics_and_ignores_the_rest() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, endpoint) (rate(digits_x_bucket{endpoint=~"/p.*",'
        'le="0.5"}[$__rate_interval]))) / ignoring(code) group_left sum(up{job="a"}[5m] offset 1h)'
    )
    assert metric_names(expr) == {"digits_x_bucket", "up"}
    assert metric_names("sum(rate(misspelt_fn(digits_y[1m])))") == {"misspelt_fn", "digits_y"}


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Every series name the service's /metrics exports, scraped from the app after traffic."""
    settings = Settings(models_dir=REPO / "models" / "mnist", model_poll_seconds=0.0)
    with TestClient(create_app(settings)) as client:
        if client.get("/health/ready").status_code == 200:
            image = Image.new("L", (200, 80), 255)
            image.paste(0, (20, 15, 34, 65))
            image.paste(0, (90, 15, 104, 65))
            png = io.BytesIO()
            image.save(png, "PNG")
            files = {"file": ("code.png", png.getvalue())}
            assert client.post("/predict", files=files).status_code == 200
            assert client.post("/recognize", files=files).status_code == 200
        client.app.state.telemetry.set_probe_accuracy(1, 1.0)  # type: ignore[attr-defined]
        response = client.get("/metrics", headers={"Accept": "text/plain"})
    assert response.status_code == 200
    names: set[str] = set()
    suffixes = {
        "counter": ["_total"],
        "histogram": ["_bucket", "_count", "_sum"],
        "summary": ["", "_count", "_sum"],
        "gauge": [""],
        "info": ["_info"],
        "unknown": [""],
    }
    for family in text_string_to_metric_families(response.text):
        names.update(family.name + suffix for suffix in suffixes[family.type])
        names.update(sample.name for sample in family.samples)
    assert "digits_http_requests_total" in names
    return names


def _queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
        for inner in panel.get("panels", []):
            for target in inner.get("targets", []):
                yield inner["title"], target["expr"]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document = json.loads(DASHBOARD.read_text())
    assert isinstance(document, dict)
    return document


def test_every_dashboard_query_names_only_exported_metrics(
    dashboard: dict[str, Any], exported: set[str]
) -> None:
    queries = list(_queries(dashboard))
    assert len(queries) >= 10
    for title, expr in queries:
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        unknown = names - exported - PROMETHEUS_SERIES
        assert not unknown, f"{title}: {sorted(unknown)} not exported by /metrics ({expr!r})"


def test_the_dashboard_covers_what_operators_asked_for(dashboard: dict[str, Any]) -> None:
    used = set().union(*(metric_names(expr) for _, expr in _queries(dashboard)))
    wanted = {
        "traffic": "digits_http_requests_total",
        "errors": "digits_errors_total",
        "latency": "digits_http_request_duration_seconds_bucket",
        "batch sizes": "digits_inference_batch_images_bucket",
        "confidence": "digits_answer_confidence_bucket",
        "digits": "digits_answered_digits_total",
        "review rate": "digits_recognize_answers_total",
        "review reasons": "digits_recognize_reviews_total",
        "versions": "digits_model_info",
        "probe accuracy": "digits_model_probe_accuracy",
    }
    missing = {topic: metric for topic, metric in wanted.items() if metric not in used}
    assert not missing


def test_every_panel_uses_the_provisioned_data_source(dashboard: dict[str, Any]) -> None:
    datasources = yaml.safe_load(
        (MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    [source] = datasources
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"], panel["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# --- compose and the configuration files ---------------------------------------------------


def _bind_targets(service: dict[str, Any]) -> dict[str, str]:
    return {
        mount["target"]: mount["source"]
        for mount in service.get("volumes", [])
        if isinstance(mount, dict) and mount.get("type") == "bind"
    }


def _flag(argv: list[str], name: str) -> str | None:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")]
    return values[-1] if values else None


def test_the_profile_runs_prometheus_and_grafana_only(services: dict[str, dict[str, Any]]) -> None:
    in_profile = {name for name, s in services.items() if PROFILE in s.get("profiles", [])}
    assert in_profile == {"prometheus", "grafana"}
    for name in in_profile:
        image = services[name]["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", image), f"{name}: pin {image}"
        for port in services[name].get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        assert services[name]["deploy"]["resources"]["limits"]["memory"]


def test_prometheus_config_is_valid_yaml_that_scrapes_every_api_replica(
    services: dict[str, dict[str, Any]], app_routes: dict[str, set[str]]
) -> None:
    prometheus = services["prometheus"]
    config_path = _flag(prometheus["command"], "--config.file")
    assert config_path is not None
    source = _bind_targets(prometheus)[config_path]
    assert (REPO / source).resolve() == (MONITORING / "prometheus.yml").resolve()
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["metrics_path"] in app_routes
    assert "GET" in app_routes[job["metrics_path"]]
    [discovery] = job["dns_sd_configs"]
    # The compose service name resolves to every replica's address (tasks.api under Swarm).
    assert set(discovery["names"]) <= {"api", "tasks.api"}
    assert "api" in services
    assert discovery["type"] == "A"
    assert str(discovery["port"]) in [str(p) for p in services["api"]["expose"]]


def test_grafana_is_provisioned_from_the_mounted_files(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    mounts = _bind_targets(grafana)
    provisioning = MONITORING / "grafana" / "provisioning"
    assert (REPO / mounts["/etc/grafana/provisioning"]).resolve() == provisioning.resolve()
    providers = yaml.safe_load((provisioning / "dashboards" / "dashboards.yml").read_text())
    [provider] = providers["providers"]
    dashboards_dir = provider["options"]["path"]
    assert (REPO / mounts[dashboards_dir]).resolve() == DASHBOARD.parent.resolve()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent == Path(dashboards_dir)
    assert (DASHBOARD.parent / Path(home).name).is_file()
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    # The data source is the prometheus service, on the port Prometheus listens on.
    assert source["url"] == "http://prometheus:9090"
    assert any(str(p).endswith(":9090") for p in services["prometheus"]["ports"])
    assert "prometheus" in grafana["depends_on"]
