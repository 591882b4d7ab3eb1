"""POST /predict and /predict/batch against a tiny model: answers, and every kind of bad input."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from app.main import create_app
from tests.app.conftest import ModelsDir, encode, make_settings, png_header
from tests.app.reading.test_segmentation import as_photo, draw_string, one, seven, zero


def digit_png(size: int = 28) -> bytes:
    """A white stroke on black: something the normalization finds ink in."""
    img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(img).line(
        [(size // 2, size // 5), (size // 2, 4 * size // 5)], fill=255, width=max(2, size // 10)
    )
    return encode(img)


def post(client: TestClient, data: bytes, name: str = "digit.png", **params: str) -> object:
    return client.post("/predict", files={"file": (name, data, "image/png")}, params=params)


def assert_error(response: object, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert len(body["error"]["message"]) > 20
    assert "Traceback" not in response.text  # type: ignore[attr-defined]
    return body["error"]  # type: ignore[no-any-return]


# --- answers -------------------------------------------------------------------------------


def test_predict_answers_with_the_documented_shape(client: TestClient) -> None:
    response = post(client, digit_png())
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "digit",
        "confidence",
        "probabilities",
        "model_version",
        "normalized",
        "needs_review",
        "review_reasons",
        "review_id",
        "queue",
    }
    assert body["digit"] == 1  # the fixture model always answers 1
    assert body["model_version"] == 1
    assert len(body["probabilities"]) == 10
    assert sum(body["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    assert body["confidence"] == pytest.approx(max(body["probabilities"]))
    assert body["normalized"] is False
    # The fixture model's confidence (0.94) is below the default threshold (0.98).
    assert body["needs_review"] is True
    assert [r["code"] for r in body["review_reasons"]] == ["low_confidence"]


def test_a_digit_is_flagged_by_the_threshold_asked_for(client: TestClient) -> None:
    data = digit_png()
    assert post(client, data, threshold=0.9).json()["needs_review"] is False
    flagged = post(client, data, threshold=0.95).json()
    assert flagged["needs_review"] is True
    (reason,) = flagged["review_reasons"]
    assert reason["code"] == "low_confidence"
    assert "below the threshold 0.95" in reason["message"]
    batch = client.post(
        "/predict/batch", files=[("files", ("a.png", data))] * 2, params={"threshold": 0.95}
    ).json()
    assert [r["prediction"]["needs_review"] for r in batch["results"]] == [True, True]


def test_a_string_sent_as_one_digit_is_flagged(client: TestClient) -> None:
    # Three digits side by side, drawn dark on light paper as a photo would be.
    ink, _ = draw_string([seven, zero, one])
    body = post(client, encode(as_photo(ink)), threshold=0.0).json()
    assert body["needs_review"] is True
    assert [r["code"] for r in body["review_reasons"]] == ["several_digits"]
    assert "/recognize" in body["review_reasons"][0]["message"]


def test_normalize_query_parameter(client: TestClient) -> None:
    data = digit_png()
    assert post(client, data).json()["normalized"] is False
    assert post(client, data, normalize="always").json()["normalized"] is True
    assert post(client, digit_png(100)).json()["normalized"] is True
    assert_error(post(client, digit_png(100), normalize="never"), 422, "wrong_size")
    error = assert_error(post(client, data, normalize="sometimes"), 422, "invalid_request")
    assert "normalize" in str(error["message"])


def test_large_upload_is_decoded_off_the_event_loop_and_answered(client: TestClient) -> None:
    photo = Image.new("L", (1200, 1600), 230)
    ImageDraw.Draw(photo).line([(600, 300), (600, 1300)], fill=20, width=40)
    response = post(client, encode(photo, "JPEG", quality=90), name="photo.jpg")
    assert response.status_code == 200
    assert response.json()["normalized"] is True


def test_small_uploads_decode_on_the_loop_and_large_ones_in_a_thread(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.api.routes import predict as predict_module

    calls: list[tuple[int, int]] = []
    real = predict_module.prepare_digit

    def recording(data: bytes, **kwargs: Any) -> Any:
        calls.append((threading.get_ident(), kwargs["max_pixels"]))
        return real(data, **kwargs)

    monkeypatch.setattr(predict_module, "prepare_digit", recording)
    assert post(client, digit_png()).status_code == 200
    [(loop_thread, _)] = calls
    calls.clear()
    photo = Image.new("L", (1000, 1000), 230)
    ImageDraw.Draw(photo).line([(500, 200), (500, 800)], fill=20, width=30)
    assert post(client, encode(photo)).status_code == 200
    # First a header-only look on the loop (refused by the small inline limit), then the
    # real decoding in the thread pool with the configured limit.
    assert [thread == loop_thread for thread, _ in calls] == [True, False]
    assert calls[1][1] == client.app.state.settings.max_image_pixels  # type: ignore[attr-defined]


def test_batch_answers_in_order_with_per_item_errors(client: TestClient) -> None:
    files = [
        ("files", ("a.png", digit_png(), "image/png")),
        ("files", ("notes.txt", b"not an image at all", "text/plain")),
        ("files", ("b.png", digit_png(64), "image/png")),
        ("files", ("empty.png", b"", "image/png")),
        ("files", ("blank.png", encode(Image.new("L", (40, 40), 255)), "image/png")),
    ]
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 200
    body = response.json()
    assert body["model_version"] == 1
    results = body["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3, 4]
    assert [r["filename"] for r in results] == [f[1][0] for f in files]
    assert results[0]["prediction"]["digit"] == 1
    assert results[0]["error"] is None
    assert results[2]["prediction"]["normalized"] is True
    assert [r["error"]["code"] if r["error"] else None for r in results] == [
        None,
        "not_an_image",
        None,
        "empty_file",
        "no_digit_found",
    ]
    assert all(r["prediction"] is None for r in results if r["error"])


def test_batch_runs_all_valid_images_in_one_model_call(client: TestClient) -> None:
    files = [("files", (f"{i}.png", digit_png(), "image/png")) for i in range(20)]
    before = client.get("/metrics").json()["service"]["inference"]
    assert client.post("/predict/batch", files=files).status_code == 200
    after = client.get("/metrics").json()["service"]["inference"]
    assert after["model_calls"] - before["model_calls"] == 1
    assert after["images"] - before["images"] == 20


def test_batch_with_too_many_files_is_refused(models: ModelsDir) -> None:
    models.add(1, digit=1)
    app = create_app(make_settings(models.path, max_batch_size=3))
    with TestClient(app) as client:
        files = [("files", (f"{i}.png", digit_png(), "image/png")) for i in range(4)]
        error = assert_error(client.post("/predict/batch", files=files), 413, "too_many_files")
        assert "at most 3" in str(error["message"])
        ok = client.post("/predict/batch", files=files[:3])
        assert ok.status_code == 200


def test_more_files_than_the_multipart_parser_takes_is_the_same_error(
    client: TestClient,
) -> None:
    files = [("files", (f"{i}.png", b"x", "image/png")) for i in range(1001)]
    assert_error(client.post("/predict/batch", files=files), 413, "too_many_files")


# --- bad input: one error shape, clear 4xx, never 500 --------------------------------------


def test_empty_file(client: TestClient) -> None:
    assert_error(post(client, b""), 400, "empty_file")


def test_not_an_image(client: TestClient) -> None:
    assert_error(post(client, b"%PDF-1.4 definitely not a picture" * 10), 400, "not_an_image")


def test_truncated_image(client: TestClient) -> None:
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 255, (300, 300), dtype=np.uint8)))
    assert_error(post(client, data[: len(data) // 2]), 400, "truncated_image")


def test_unsupported_format(client: TestClient) -> None:
    error = assert_error(
        post(client, encode(Image.new("L", (28, 28)), "TIFF")), 415, "unsupported_format"
    )
    assert "TIFF" in str(error["message"])


def test_pixel_bomb_is_refused_from_its_header(client: TestClient) -> None:
    # The file holds 64 bytes of pixel data: had decoding started, it would fail as truncated
    # (after trying to allocate 10 GB), not be refused as too large.
    error = assert_error(post(client, png_header(100_000, 100_000)), 413, "image_too_large")
    assert "25,000,000 pixels" in str(error["message"])


def test_wrong_field_name(client: TestClient) -> None:
    response = client.post("/predict", files={"image": ("a.png", digit_png(), "image/png")})
    error = assert_error(response, 422, "invalid_request")
    assert "'file'" in str(error["message"])


def test_missing_field(client: TestClient) -> None:
    error = assert_error(client.post("/predict"), 422, "invalid_request")
    assert "'file'" in str(error["message"])
    error = assert_error(client.post("/predict/batch", data={"x": "1"}), 422, "invalid_request")
    assert "'files'" in str(error["message"])


def test_text_field_instead_of_file(client: TestClient) -> None:
    error = assert_error(client.post("/predict", data={"file": "hello"}), 422, "invalid_request")
    assert "'file'" in str(error["message"])
    response = client.post("/predict/batch", data={"files": ["a", "b"]})
    error = assert_error(response, 422, "invalid_request")
    assert "'files' must be a file" in str(error["message"])


def test_blank_image_has_no_digit(client: TestClient) -> None:
    for img in (Image.new("L", (28, 28), 0), Image.new("RGB", (300, 200), "white")):
        assert_error(post(client, encode(img)), 422, "no_digit_found")


def test_unknown_path_and_wrong_method(client: TestClient) -> None:
    assert_error(client.get("/nowhere"), 404, "not_found")
    error = assert_error(client.get("/predict"), 405, "method_not_allowed")
    assert "POST" in str(error["message"])


def test_unexpected_crash_is_a_generic_500_without_internals(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    def explode() -> None:
        raise RuntimeError("secret internal detail")

    client.app.add_api_route("/explode", explode)  # type: ignore[attr-defined]
    import logging

    logging.getLogger("app").addHandler(caplog.handler)
    try:
        response = client.get("/explode")
    finally:
        logging.getLogger("app").removeHandler(caplog.handler)
    error = assert_error(response, 500, "internal_error")
    assert "secret" not in response.text
    assert "logged" in str(error["message"])
    assert any("secret internal detail" in (r.exc_text or "") for r in caplog.records)


# --- API key -------------------------------------------------------------------------------


@pytest.fixture
def keyed_client(models: ModelsDir) -> Iterator[TestClient]:
    models.add(1, digit=1)
    with TestClient(create_app(make_settings(models.path, api_key="s3cret-key"))) as client:
        yield client


def test_api_key_is_required_when_configured(keyed_client: TestClient) -> None:
    assert_error(post(keyed_client, digit_png()), 401, "missing_api_key")
    wrong = keyed_client.post(
        "/predict",
        files={"file": ("a.png", digit_png(), "image/png")},
        headers={"X-API-Key": "s3cret-kez"},
    )
    assert_error(wrong, 401, "invalid_api_key")
    right = keyed_client.post(
        "/predict",
        files={"file": ("a.png", digit_png(), "image/png")},
        headers={"X-API-Key": "s3cret-key"},
    )
    assert right.status_code == 200
    batch = keyed_client.post(
        "/predict/batch", files=[("files", ("a.png", digit_png(), "image/png"))]
    )
    assert_error(batch, 401, "missing_api_key")


def test_operational_endpoints_need_no_key(keyed_client: TestClient) -> None:
    # Probes and Prometheus scrapers carry no key; /model lists the models directory, so it does.
    for path in ("/health/live", "/health/ready", "/metrics"):
        assert keyed_client.get(path).status_code == 200, path
    assert_error(keyed_client.get("/model"), 401, "missing_api_key")
    assert keyed_client.get("/model", headers={"X-API-Key": "s3cret-key"}).status_code == 200


def raw(client: TestClient, path: str, data: bytes, kind: str = "image/png", **params: Any) -> Any:
    return client.post(path, content=data, headers={"Content-Type": kind}, params=params)


def test_the_image_may_be_the_request_body(client: TestClient) -> None:
    data = digit_png()
    multipart = post(client, data).json()
    # The plain request (the short cut) and one with a query (the full route) alike.
    assert raw(client, "/predict", data).json() == multipart
    assert raw(client, "/predict", data, "application/octet-stream").json() == multipart
    assert raw(client, "/predict", data, normalize="always").json()["normalized"] is True
    flagged = raw(client, "/predict", data, threshold=0.95).json()
    assert flagged["needs_review"] is True


def test_a_raw_body_gets_the_same_errors(client: TestClient) -> None:
    assert_error(raw(client, "/predict", b""), 400, "empty_file")
    assert_error(raw(client, "/predict", b"not an image at all"), 400, "not_an_image")
    error = assert_error(client.post("/predict", json={"image": "x"}), 422, "invalid_request")
    assert "Content-Type" in str(error["message"])
    assert error["details"] == {"content_type": "application/json"}


def test_a_raw_body_is_held_to_the_upload_limit(models: ModelsDir) -> None:
    models.add(1, digit=1)
    with TestClient(create_app(make_settings(models.path, max_upload_bytes=2048))) as small:
        assert_error(raw(small, "/predict", b"\x89PNG" + b"\0" * 4096), 413, "payload_too_large")


def test_recognize_takes_the_image_as_the_body_too(client: TestClient) -> None:
    ink, _ = draw_string([seven, zero, one])
    data = encode(as_photo(ink))
    multipart = client.post("/recognize", files={"file": ("c.png", data)}).json()
    body = raw(client, "/recognize", data).json()
    # The same reading, queued for review as another item.
    assert multipart["queue"] == body["queue"] == "queued"
    assert {**body, "review_id": None} == {**multipart, "review_id": None}
    assert_error(client.post("/recognize", data={"x": "1"}), 422, "invalid_request")


def test_the_raw_body_is_documented(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/predict", "/recognize"):
        content = paths[path]["post"]["requestBody"]["content"]
        assert {"multipart/form-data", "image/png", "image/jpeg"} <= set(content), path
