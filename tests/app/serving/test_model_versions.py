"""Model versions: readiness, hot swap, corrupt versions never served, polling, /model."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from app.main import create_app
from app.serving.runtime import Predictor
from app.serving.runtime import load as load_predictor
from app.serving.store import ModelStore
from app.serving.worker import InferenceWorker
from tests.app.conftest import ModelsDir, encode, make_settings


def stroke_png() -> bytes:
    img = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(img).line([(14, 5), (14, 23)], fill=255, width=3)
    return encode(img)


def predict(client: TestClient) -> dict[str, object]:
    response = client.post("/predict", files={"file": ("d.png", stroke_png(), "image/png")})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def wait_for(condition: object, timeout: float = 30.0) -> None:
    """Poll a condition (a callable) until true; the timeout only bounds a broken test."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def test_newest_version_is_served(models: ModelsDir) -> None:
    models.add(1, digit=1)
    models.add(2, digit=2)
    with TestClient(create_app(make_settings(models.path))) as client:
        answer = predict(client)
        assert (answer["model_version"], answer["digit"]) == (2, 2)
        assert client.get("/health/ready").json() == {"status": "ready", "model_version": 2}


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_no_model_means_not_ready_but_alive(
    tmp_path: Path, state: str, caplog: pytest.LogCaptureFixture
) -> None:
    models_dir = tmp_path / "models"
    if state == "empty":
        models_dir.mkdir()
    logging.getLogger("app").addHandler(caplog.handler)
    try:
        app = create_app(make_settings(models_dir, model_poll_seconds=0.02))
        with TestClient(app) as client:
            # Several polls find nothing; the log says so once.
            first = app.state.store.last_checked
            wait_for(lambda: app.state.store.last_checked != first)
            second = app.state.store.last_checked
            wait_for(lambda: app.state.store.last_checked != second)
            assert client.get("/health/live").status_code == 200
            ready = client.get("/health/ready")
            assert ready.status_code == 503
            assert ready.json()["error"]["code"] == "model_not_ready"
            response = client.post("/predict", files={"file": ("d.png", stroke_png(), "image/png")})
            assert response.status_code == 503
            # Polling is on: a version that appears will be served, so retrying makes sense.
            assert response.headers["retry-after"] == "1"
            assert "try again shortly" in response.json()["error"]["message"]
            info = client.get("/model").json()
            assert info["ready"] is False
            assert info["version"] is None
            assert client.get("/metrics").json()["model"] is None
    finally:
        logging.getLogger("app").removeHandler(caplog.handler)
    not_ready = [r for r in caplog.records if "not ready" in r.getMessage()]
    assert len(not_ready) == 1
    assert str(models_dir.resolve()) in not_ready[0].getMessage()
    assert "still looking" in not_ready[0].getMessage()


def test_no_model_and_polling_off_asks_for_a_model_and_a_restart(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    with TestClient(create_app(make_settings(models_dir, model_poll_seconds=0))) as client:
        for response in (
            client.get("/health/ready"),
            client.post("/predict", files={"file": ("d.png", stroke_png(), "image/png")}),
        ):
            assert response.status_code == 503
            assert "retry-after" not in response.headers, "nothing changes without a restart"
            error = response.json()["error"]
            assert error["code"] == "model_not_ready"
            message = error["message"].lower()
            assert "try again" not in message
            assert "restart" in message
            assert str(models_dir) in error["message"]
            assert "DIGITS_MODEL_POLL_SECONDS" in error["message"]


def test_polling_picks_up_a_model_that_appears_later(models: ModelsDir) -> None:
    settings = make_settings(models.path, model_poll_seconds=0.05)
    with TestClient(create_app(settings)) as client:
        assert client.get("/health/ready").status_code == 503
        models.add(1, digit=3)
        wait_for(lambda: client.get("/health/ready").status_code == 200)
        assert predict(client)["digit"] == 3


def test_hot_swap_to_a_new_version_and_corrupt_one_never_served(models: ModelsDir) -> None:
    models.add(1, digit=1)
    settings = make_settings(models.path, model_poll_seconds=0.05)
    with TestClient(create_app(settings)) as client:
        assert predict(client)["model_version"] == 1

        models.add(2, digit=2)
        wait_for(lambda: client.get("/model").json()["version"] == 2)
        assert predict(client)["digit"] == 2

        models.add_corrupt(3)
        wait_for(lambda: client.get("/model").json()["failed_versions"])
        info = client.get("/model").json()
        assert info["version"] == 2
        assert info["versions_on_disk"] == [3, 2, 1]
        [failed] = info["failed_versions"]
        assert failed["version"] == 3
        assert "cannot be loaded" in failed["reason"]
        for _ in range(5):
            assert predict(client)["model_version"] == 2

        models.add(4, digit=1)
        wait_for(lambda: client.get("/model").json()["version"] == 4)
        assert predict(client)["digit"] == 1
        prometheus = client.get("/metrics", headers={"Accept": "text/plain"}).text
        assert "digits_model_version 4.0" in prometheus


def test_corrupt_newest_version_at_start_falls_back_to_previous(models: ModelsDir) -> None:
    models.add(1, digit=1)
    models.add_corrupt(2)
    with TestClient(create_app(make_settings(models.path))) as client:
        assert predict(client)["model_version"] == 1
        assert [f["version"] for f in client.get("/model").json()["failed_versions"]] == [2]


def test_version_with_a_wrong_signature_is_refused(models: ModelsDir, tmp_path: Path) -> None:
    import tensorflow as tf

    class Other(tf.Module):  # type: ignore[misc]
        @tf.function(input_signature=[tf.TensorSpec([None, 784], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"scores": x[:, :10]}

    module = Other()
    tf.saved_model.save(
        module, str(models.path / "5"), signatures={"serving_default": module.serve}
    )
    models.add(1, digit=1)
    with TestClient(create_app(make_settings(models.path))) as client:
        info = client.get("/model").json()
        assert info["version"] == 1
        [failed] = info["failed_versions"]
        assert failed["version"] == 5
        assert "images" in failed["reason"]


def test_failed_version_is_retried_only_when_its_content_changes(models: ModelsDir) -> None:
    calls: list[str] = []
    corrupt = models.add_corrupt(2)
    models.add(1, digit=1)

    def counting_loader(path: Path) -> Predictor:
        calls.append(path.name)
        return load_predictor(path)

    store = ModelStore(models.path, loader=counting_loader)
    assert store.refresh() is not None
    assert store.refresh() is not None
    assert sorted(calls) == ["1", "2"]  # 2 failed once and was not tried again
    # A file deep inside changes (the copy goes on): the version directory's own mtime stays
    # the same, and the version is still worth another try.
    stat = corrupt.stat()
    (corrupt / "variables" / "variables.index").write_bytes(b"more of the copy")
    os.utime(corrupt, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert corrupt.stat().st_mtime_ns == stat.st_mtime_ns
    store.refresh()
    assert sorted(calls) == ["1", "2", "2"]
    [failed] = store.failed
    assert failed.attempts == 2
    store.refresh()
    assert sorted(calls) == ["1", "2", "2"]


def test_request_in_flight_finishes_on_the_version_it_started_with(models: ModelsDir) -> None:
    models.add(1, digit=1)
    store = ModelStore(models.path)
    old = store.refresh()
    assert old is not None
    assert old.version == 1
    models.add(2, digit=2)
    new = store.refresh()
    assert new is not None
    assert new.version == 2
    assert store.current is new

    worker = InferenceWorker()
    worker.start()
    try:
        images = np.zeros((3, 28, 28), np.uint8)

        async def both() -> tuple[object, object]:
            # Queued together, so the worker handles them in one pass: one call per version.
            return await asyncio.gather(worker.predict(old, images), worker.predict(new, images))

        on_old, on_new = asyncio.run(both())
    finally:
        worker.stop()
    assert on_old.model_version == 1
    assert list(on_old.digits) == [1, 1, 1]
    assert on_new.model_version == 2
    assert list(on_new.digits) == [2, 2, 2]


def test_polling_thread_stops_with_the_app(models: ModelsDir) -> None:
    models.add(1, digit=1)
    settings = make_settings(models.path, model_poll_seconds=0.05)
    with TestClient(create_app(settings)):
        assert any(t.name == "model-poller" for t in threading.enumerate())
    wait_for(lambda: not any(t.name == "model-poller" for t in threading.enumerate()), 10)


def test_model_endpoint_describes_the_signature_and_metrics(client: TestClient) -> None:
    info = client.get("/model").json()
    assert info["ready"] is True
    assert info["version"] == 1
    assert info["signature"]["name"] == "serving_default"
    assert info["signature"]["inputs"] == [
        {"name": "images", "dtype": "uint8", "shape": [None, 28, 28]}
    ]
    outputs = {o["name"]: o for o in info["signature"]["outputs"]}
    assert outputs["probabilities"]["dtype"] == "float32"
    assert outputs["probabilities"]["shape"] == [None, 10]
    assert outputs["digit"]["dtype"] == "int64"
    assert info["recipe"] == "fixture"
    assert info["created_at"] == "2025-01-01T00:00:00Z"
    assert info["test_accuracy"] == 0.5
    assert info["versions_on_disk"] == [1]
    assert info["failed_versions"] == []
