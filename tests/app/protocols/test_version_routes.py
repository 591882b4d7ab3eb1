"""Versions through the API: ?version= and ?label=, /model's view, Prometheus, the gate."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from app.main import create_app
from tests.app.conftest import ModelsDir, encode, make_settings


def stroke_png() -> bytes:
    img = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(img).line([(14, 5), (14, 23)], fill=255, width=3)
    return encode(img)


def post(client: TestClient, query: str = "") -> tuple[int, dict[str, object]]:
    response = client.post(f"/predict{query}", files={"file": ("d.png", stroke_png(), "image/png")})
    return response.status_code, response.json()


def prometheus(client: TestClient) -> dict[str, float]:
    text = client.get("/metrics", headers={"Accept": "text/plain"}).text
    samples = {}
    for line in text.splitlines():
        if line.startswith("digits_model") and " " in line:
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_requests_choose_a_version_by_number_or_label(models: ModelsDir) -> None:
    for version in (1, 2, 3):
        models.add(version, digit=version)
    settings = make_settings(models.path, version_labels="stable=1,canary=2")
    with TestClient(create_app(settings)) as client:
        status, answer = post(client)
        assert (status, answer["model_version"], answer["digit"]) == (200, 3, 3)
        status, answer = post(client, "?label=stable")
        assert (status, answer["model_version"], answer["digit"]) == (200, 1, 1)
        status, answer = post(client, "?version=2")
        assert (status, answer["model_version"], answer["digit"]) == (200, 2, 2)
        status, answer = post(client, "?version=2&label=canary")
        assert (status, answer["model_version"]) == (200, 2)

        batch = client.post(
            "/predict/batch?label=canary",
            files=[("files", ("a.png", stroke_png(), "image/png"))] * 2,
        ).json()
        assert batch["model_version"] == 2
        assert [r["prediction"]["digit"] for r in batch["results"]] == [2, 2]

        img = Image.new("L", (120, 60), 255)
        draw = ImageDraw.Draw(img)
        draw.line([(30, 10), (30, 50)], fill=0, width=5)
        draw.line([(80, 10), (80, 50)], fill=0, width=5)
        recognized = client.post(
            "/recognize?version=1", files={"file": ("code.png", encode(img), "image/png")}
        )
        assert recognized.status_code == 200, recognized.text
        assert recognized.json()["model_version"] == 1

        for query in ("?version=7", "?label=nope", "?version=1&label=canary"):
            status, body = post(client, query)
            assert status == 404, (query, body)
            error = body["error"]
            assert isinstance(error, dict)
            assert error["code"] == "version_not_found"
            assert error["details"]["served_versions"] == [1, 2, 3]
        status, body = post(client, "?version=x")
        assert status == 422
        status, body = post(client, f"?version={2**53}")
        assert status == 422
        status, body = post(client, "?label=../../etc")
        assert status == 422

        info = client.get("/model").json()
        assert info["version"] == 3
        assert [(v["version"], v["labels"], v["default"]) for v in info["served_versions"]] == [
            (3, [], True),
            (2, ["canary"], False),
            (1, ["stable"], False),
        ]
        assert info["policy"]["kind"] == "latest"
        assert info["policy"]["labels"] == {"stable": 1, "canary": 2}

        samples = prometheus(client)
        assert samples['digits_model_versions{state="served"}'] == 3
        assert samples['digits_model_label_version{label="canary"}'] == 2
        assert samples['digits_model_version_state{state="served",version="1"}'] == 1

    openapi = create_app(settings).openapi()
    parameters = {p["name"] for p in openapi["paths"]["/predict"]["post"]["parameters"]}
    assert {"version", "label"} <= parameters
    assert "404" in openapi["paths"]["/recognize"]["post"]["responses"]


def test_the_gate_holds_a_worse_version_and_a_pin_serves_it(models: ModelsDir) -> None:
    models.add(1, digit=1, accuracy=0.9727)
    models.add(2, digit=2, accuracy=0.8804)
    with TestClient(create_app(make_settings(models.path))) as client:
        assert post(client)[1]["model_version"] == 1
        info = client.get("/model").json()
        [held] = info["held_versions"]
        assert held["version"] == 2
        assert held["test_accuracy"] == 0.8804
        assert "DIGITS_PROMOTION_TOLERANCE" in held["reason"]
        assert [v["version"] for v in info["served_versions"]] == [1]
        samples = prometheus(client)
        assert samples["digits_model_versions_held_total"] == 1
        assert samples['digits_model_versions{state="held"}'] == 1
        assert samples['digits_model_version_state{state="held",version="2"}'] == 1
        assert samples["digits_model_test_accuracy"] == 0.9727
        assert post(client, "?version=2")[0] == 404

    pinned = make_settings(models.path, version_policy="specific", versions="2")
    with TestClient(create_app(pinned)) as client:
        status, answer = post(client)
        assert (status, answer["model_version"], answer["digit"]) == (200, 2, 2)
        assert client.get("/model").json()["held_versions"] == []


def test_model_shows_each_versions_real_digit_figures(models: ModelsDir) -> None:
    # As training writes them (training/real_digits.py), with the per-set rows.
    better = {
        "items": 1500,
        "accuracy": 0.968,
        "baseline": {"version": 1, "accuracy": 0.9507},
        "sets": [
            {"name": "reviewed", "items": 1500, "accuracy": 0.968, "baseline_accuracy": 0.9507}
        ],
    }
    worse = {"items": 1200, "accuracy": 0.931, "baseline": {"version": 2, "accuracy": 0.9642}}
    models.add(1, digit=1, accuracy=0.9727)
    models.add(2, digit=2, accuracy=0.9730, real_digits=better)
    models.add(3, digit=3, accuracy=0.9731, real_digits=worse)
    # Held on MNIST; measured on real digits with no version served before it to compare with.
    models.add(4, digit=1, accuracy=0.90, real_digits={"items": 40, "accuracy": 0.9})
    settings = make_settings(models.path, version_labels="stable=1")
    with TestClient(create_app(settings)) as client:
        info = client.get("/model").json()
        served = {v["version"]: v for v in info["served_versions"]}
        assert sorted(served) == [1, 2]
        assert served[1]["real_digits"] is None  # trained without real digits
        assert served[2]["real_digits"] == {
            "items": 1500,
            "accuracy": 0.968,
            "baseline": {"version": 1, "accuracy": 0.9507},
        }
        held = {h["version"]: h for h in info["held_versions"]}
        assert sorted(held) == [3, 4]
        assert held[3]["real_digits"] == {
            "items": 1200,
            "accuracy": 0.931,
            "baseline": {"version": 2, "accuracy": 0.9642},
        }
        assert held[4]["real_digits"] == {"items": 40, "accuracy": 0.9, "baseline": None}

    pinned = make_settings(models.path, version_policy="specific", versions="3")
    with TestClient(create_app(pinned)) as client:
        [version] = client.get("/model").json()["served_versions"]
        assert version["version"] == 3
        assert version["real_digits"]["accuracy"] == 0.931

    schemas = create_app(settings).openapi()["components"]["schemas"]
    for name in ("ServedVersionInfo", "HeldVersionInfo"):
        field = schemas[name]["properties"]["real_digits"]
        assert "--extra-data" in field["description"], name
    assert schemas["RealDigitsInfo"]["description"]
    assert set(schemas["RealDigitsInfo"]["properties"]) == {"items", "accuracy", "baseline"}


def test_failures_are_counted_and_shown_without_absolute_paths(models: ModelsDir) -> None:
    models.add(1, digit=1)
    models.add_corrupt(2)
    (models.path / "²").mkdir()
    (models.path / str(2**53)).mkdir()
    settings = make_settings(models.path, model_poll_seconds=0.05)
    with TestClient(create_app(settings)) as client:
        info = client.get("/model").json()
        assert info["version"] == 1
        [failed] = info["failed_versions"]
        assert failed["version"] == 2
        assert str(models.path) not in failed["reason"]
        assert str(models.path.resolve()) not in failed["reason"]
        assert {e["name"] for e in info["ignored_entries"]} == {"\\xb2", str(2**53)}
        samples = prometheus(client)
        assert samples["digits_model_load_failures_total"] == 1
        assert samples['digits_model_versions{state="failed"}'] == 1
        assert samples['digits_model_versions{state="ignored"}'] == 2
        assert post(client)[1]["model_version"] == 1


def test_a_model_without_metrics_json_never_shows_the_previous_accuracy(
    models: ModelsDir,
) -> None:
    first = models.add(1, digit=1, accuracy=0.9727)
    settings = make_settings(models.path, model_poll_seconds=0.05)
    with TestClient(create_app(settings)) as client:
        assert prometheus(client)["digits_model_test_accuracy"] == 0.9727
        # Version 1 goes and version 2 comes with no report: it is the only one, so served.
        second = models.add(2, digit=3)
        (second / "metrics.json").unlink()
        shutil.rmtree(first)
        deadline = time.monotonic() + 30
        while client.get("/model").json()["version"] != 2:
            assert time.monotonic() < deadline, "version 2 not served"
            time.sleep(0.05)
        assert post(client)[1]["digit"] == 3
        assert math.isnan(prometheus(client)["digits_model_test_accuracy"])
        evaluation = client.get("/metrics").json()["model"]
        assert evaluation["version"] == 2
        assert evaluation["test"] is None
        assert client.get("/model").json()["test_accuracy"] is None


def test_a_version_name_that_is_not_ascii_does_not_stop_start_up(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    (models_dir / "²").mkdir(parents=True)
    with TestClient(create_app(make_settings(models_dir))) as client:
        assert client.get("/health/live").status_code == 200
        assert client.get("/health/ready").status_code == 503
        assert client.get("/model").json()["ignored_entries"][0]["name"] == "\\xb2"


def test_an_invalid_answer_at_request_time_is_a_clear_error(tmp_path: Path) -> None:
    import tensorflow as tf

    class NanOnMarkedPixel(tf.Module):  # type: ignore[misc]
        @tf.function(  # type: ignore[untyped-decorator]  # tensorflow ships no type hints
            input_signature=[tf.TensorSpec([None, 28, 28], tf.uint8, name="images")]
        )
        def serve(self, images: Any) -> dict[str, Any]:
            # Sane on the probe set; NaN when the top-left pixel is 7, which no probe image has.
            logits = tf.zeros([tf.shape(images)[0], 10]) + tf.one_hot(4, 10)
            probabilities = tf.nn.softmax(logits)
            marked = tf.equal(images[:, 0:1, 0], 7)
            probabilities = tf.where(marked, np.nan, probabilities)
            return {"probabilities": probabilities, "digit": tf.argmax(logits, axis=1)}

    module = NanOnMarkedPixel()
    models_dir = tmp_path / "models"
    tf.saved_model.save(module, str(models_dir / "1"), signatures={"serving_default": module.serve})
    pixels = np.zeros((28, 28), np.uint8)
    pixels[6:22, 12:16] = 255
    plain = encode(Image.fromarray(pixels))
    pixels[0, 0] = 7
    marked = encode(Image.fromarray(pixels))
    with TestClient(create_app(make_settings(models_dir))) as client:
        ok = client.post("/predict?normalize=never", files={"file": ("d.png", plain, "image/png")})
        assert ok.status_code == 200, ok.text
        assert ok.json()["digit"] == 4
        bad = client.post(
            "/predict?normalize=never", files={"file": ("d.png", marked, "image/png")}
        )
        assert bad.status_code == 503
        error = bad.json()["error"]
        assert error["code"] == "model_output_invalid"
        assert "version 1" in error["message"]
        again = client.post(
            "/predict?normalize=never", files={"file": ("d.png", plain, "image/png")}
        )
        assert again.status_code == 200
