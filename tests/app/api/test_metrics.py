"""GET /metrics: JSON for people, Prometheus text for scrapers, and counters that move; under
several worker processes, the replica's counts whichever worker answers."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw
from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

from app.core.logging import JsonFormatter, configure_logging
from harness.servers import REPO
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


# --- several worker processes (prometheus_client's multiprocess mode) ----------------------

#: One worker process of a replica: answers some /predict requests, makes one model call,
#: and ends with one request still in flight (as a worker that dies would).
_WORKER = """
import os, sys
from app.telemetry import Telemetry
telemetry = Telemetry()
answered = int(sys.argv[1])
for _ in range(answered):
    telemetry.observe_request("/predict", "POST", 200, 0.004)
telemetry.count_images("/predict", answered)
telemetry.count_error("not_an_image")
telemetry.observe_batch(answered, answered, 0.001)
telemetry.in_flight += 1
print(os.getpid())
"""

#: The worker that answers a scrape: both forms, as /metrics gives them.
_SCRAPE = """
import json
from app.telemetry import Telemetry
telemetry = Telemetry()
body, _ = telemetry.prometheus("text/plain")
print(json.dumps({"text": body.decode(), "figures": telemetry.live_figures()}, default=str))
"""


def run_in_worker(code: str, directory: Path, *args: str) -> str:
    """Run ``code`` in a new interpreter sharing ``directory`` as a worker of the launcher would
    (prometheus_client reads the variable when it is first imported)."""
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout


def scrape_workers(directory: Path) -> tuple[dict[str, float], dict[str, Any]]:
    answer = json.loads(run_in_worker(_SCRAPE, directory))
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(answer["text"]):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values, answer["figures"]


def test_a_scrape_adds_up_every_worker_process(tmp_path: Path) -> None:
    first = int(run_in_worker(_WORKER, tmp_path, "3"))
    run_in_worker(_WORKER, tmp_path, "4")
    values, figures = scrape_workers(tmp_path)

    ok = "digits_http_requests_total{endpoint=/predict,method=POST,status=200}"
    assert values[ok] == 7
    assert (
        values[
            "digits_http_request_duration_seconds_count{endpoint=/predict,method=POST,status=200}"
        ]
        == 7
    )
    assert values["digits_images_predicted_total{endpoint=/predict}"] == 7
    assert values["digits_errors_total{code=not_an_image}"] == 2
    assert values["digits_inference_batch_images_count{}"] == 2
    assert values["digits_inference_requests_total{}"] == 7
    assert values["digits_inference_largest_batch_images{}"] == 4
    # Both workers ended with a request in flight; nobody has marked them dead yet.
    assert values["digits_http_requests_in_progress{}"] == 2
    # The served state is the answering worker's (no model here), process_* the replica's.
    assert values["digits_ready{}"] == 0
    assert values["process_resident_memory_bytes{}"] > 0
    assert not any("pid" in key for key in values)

    service = figures
    assert service["requests_total"] == 7
    assert service["endpoints"]["POST /predict"]["requests"] == 7
    assert service["endpoints"]["POST /predict"]["mean_latency_ms"] == pytest.approx(4.0)
    assert service["errors_by_code"] == {"not_an_image": 2}
    assert service["images_predicted"] == 7
    assert service["requests_in_progress"] == 2
    assert service["inference"] == {
        "model_calls": 2,
        "images": 7,
        "requests": 7,
        "mean_images_per_call": 3.5,
        "mean_requests_per_call": 3.5,
        "largest_call": 4,
    }

    # The launcher marks an ended worker dead: its requests in flight stop counting, its
    # counts stay (a total never goes down while the replica runs).
    mark_process_dead(first, str(tmp_path))  # type: ignore[no-untyped-call]
    values, figures = scrape_workers(tmp_path)
    assert values["digits_http_requests_in_progress{}"] == 1
    assert values[ok] == 7
    assert figures["requests_total"] == 7


def test_one_process_keeps_its_metrics_in_memory(client: TestClient) -> None:
    telemetry = client.app.state.telemetry  # type: ignore[attr-defined]
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    assert telemetry.exposed is telemetry.registry
    client.post("/predict", files={"file": ("d.png", stroke_png(), "image/png")})
    inference = client.get("/metrics").json()["service"]["inference"]
    assert inference["model_calls"] == 1
    assert inference["requests"] == 1
    assert inference["largest_call"] == 1
    assert scrape(client)["digits_inference_requests_total{}"] == 1
