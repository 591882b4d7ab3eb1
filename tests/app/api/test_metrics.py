"""GET /metrics: JSON for people, Prometheus text for scrapers, and counters that move."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw
from prometheus_client.parser import text_string_to_metric_families

from app.core.logging import JsonFormatter, configure_logging
from tests.app.conftest import encode


def stroke_png() -> bytes:
    img = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(img).line([(14, 5), (14, 23)], fill=255, width=3)
    return encode(img)


def scrape(client: TestClient, accept: str = "text/plain") -> dict[str, float]:
    response = client.get("/metrics", headers={"Accept": accept})
    assert response.status_code == 200
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


def test_json_has_model_evaluation_and_live_figures(client: TestClient) -> None:
    client.post("/predict", files={"file": ("d.png", stroke_png(), "image/png")})
    client.post("/predict", files={"file": ("d.png", b"", "image/png")})
    body = client.get("/metrics").json()
    model = body["model"]
    assert model["version"] == 1
    assert model["recipe"] == "fixture"
    assert model["test"]["accuracy"] == 0.5
    assert model["test"]["loss"] == 1.5
    assert len(model["test"]["per_class"]) == 10
    assert len(model["test"]["confusion_matrix"]) == 10
    service = body["service"]
    assert service["ready"] is True
    assert service["endpoints"]["POST /predict"]["by_status"] == {"200": 1, "400": 1}
    assert service["endpoints"]["POST /predict"]["errors"] == 1
    assert service["errors_by_code"] == {"empty_file": 1}
    assert service["images_predicted"] == 1
    assert service["inference"]["model_calls"] == 1


def test_prometheus_text_parses_and_counters_move(client: TestClient) -> None:
    first = scrape(client)
    client.post("/predict", files={"file": ("d.png", stroke_png(), "image/png")})
    client.post("/predict", files={"file": ("d.png", b"nope", "image/png")})
    client.get("/no/such/path/12345")
    second = scrape(client)

    ok = "digits_http_requests_total{endpoint=/predict,method=POST,status=200}"
    bad = "digits_http_requests_total{endpoint=/predict,method=POST,status=400}"
    assert second[ok] - first.get(ok, 0.0) == 1
    assert second[bad] - first.get(bad, 0.0) == 1
    assert second["digits_errors_total{code=not_an_image}"] == 1
    assert second["digits_images_predicted_total{endpoint=/predict}"] == 1
    hist = "digits_http_request_duration_seconds_count{endpoint=/predict,method=POST,status=200}"
    assert second[hist] == 1
    # Unknown paths are one label value, not one per path.
    assert "digits_http_requests_total{endpoint=unmatched,method=GET,status=404}" in second
    assert not any("12345" in key for key in second)
    assert second["digits_model_test_accuracy{}"] == 0.5
    assert (
        second["digits_model_info{created_at=2025-01-01T00:00:00Z,recipe=fixture,version=1}"] == 1
    )
    assert second["digits_ready{}"] == 1
    metrics_scrapes = "digits_http_requests_total{endpoint=/metrics,method=GET,status=200}"
    assert second[metrics_scrapes] - first.get(metrics_scrapes, 0.0) == 1


def test_openmetrics_is_negotiated(client: TestClient) -> None:
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")
    plain = client.get("/metrics", headers={"Accept": "text/plain"})
    assert plain.headers["content-type"].startswith("text/plain")
    assert client.get("/metrics").headers["content-type"] == "application/json"
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    assert client.get("/metrics", headers={"Accept": browser}).headers["content-type"] == (
        "application/json"
    )


def test_each_app_has_its_own_registry(client: TestClient, models: object) -> None:
    from app.main import create_app
    from tests.app.conftest import make_settings

    other = create_app(make_settings(client.app.state.settings.models_dir))  # type: ignore[attr-defined]
    assert other.state.telemetry.registry is not client.app.state.telemetry.registry  # type: ignore[attr-defined]


def test_access_log_line_per_request(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    logging.getLogger("app").addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="app.access"):
            client.get("/health/live")
    finally:
        logging.getLogger("app").removeHandler(caplog.handler)
    [line] = [r for r in caplog.records if r.name == "app.access"]
    assert '"GET /health/live" 200' in line.getMessage()
    assert line.duration_ms >= 0  # type: ignore[attr-defined]
    assert line.endpoint == "/health/live"  # type: ignore[attr-defined]


def test_json_log_format() -> None:
    record = logging.makeLogRecord(
        {"name": "app.access", "levelname": "INFO", "msg": "hello %s", "args": ("there",)}
    )
    record.status = 200
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "hello there"
    assert entry["status"] == 200
    assert entry["level"] == "INFO"
    configure_logging("INFO", "json")
    handlers = logging.getLogger("app").handlers
    assert any(isinstance(h.formatter, JsonFormatter) for h in handlers)
    configure_logging("INFO", "text")
    assert len(logging.getLogger("app").handlers) == len(handlers)


def test_label_values_stay_bounded(client: TestClient) -> None:
    for i in range(5):
        client.request(f"BREW{i}", f"/random/path/{i}")
    values = scrape(client)
    assert values["digits_http_requests_total{endpoint=unmatched,method=OTHER,status=404}"] == 5
    assert not any("BREW" in key or "/random" in key for key in values)
