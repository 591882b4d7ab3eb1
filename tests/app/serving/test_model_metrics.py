"""What the model answers, in Prometheus: confidence, digits by value, review rate and reasons,
probe accuracy. Checked against the tiny model of conftest.py (answers 1 for everything)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.reading.reader import Reading
from app.reading.review import ReasonCode, review_reasons
from app.telemetry import REVIEW_REASONS, Telemetry
from tests.app.api.test_recognize import CONSTANT_CONFIDENCE, post, three_digit_png
from tests.app.conftest import encode
from tests.app.reading.test_segmentation import as_photo, draw_string, seven


def sample(client: TestClient, name: str, **labels: str) -> float:
    telemetry: Telemetry = client.app.state.telemetry  # type: ignore[attr-defined]
    return telemetry.registry.get_sample_value(name, labels) or 0.0


def test_predict_counts_the_digit_and_its_confidence(client: TestClient, digit_png: bytes) -> None:
    for _ in range(3):
        answer = client.post("/predict", files={"file": ("d.png", digit_png)}).json()
    assert answer["digit"] == 1
    assert sample(client, "digits_answered_digits_total", endpoint="/predict", digit="1") == 3
    assert sample(client, "digits_answered_digits_total", endpoint="/predict", digit="7") == 0
    assert sample(client, "digits_answer_confidence_count", endpoint="/predict") == 3
    assert sample(client, "digits_answer_confidence_sum", endpoint="/predict") == pytest.approx(
        3 * answer["confidence"]
    )
    # The tiny model's confidence (0.94) is between the 0.9 and 0.95 buckets' bounds.
    assert sample(client, "digits_answer_confidence_bucket", endpoint="/predict", le="0.9") == 0
    assert sample(client, "digits_answer_confidence_bucket", endpoint="/predict", le="0.95") == 3


def test_batch_counts_every_answered_image_and_no_failed_one(
    client: TestClient, digit_png: bytes
) -> None:
    files = [("files", ("a.png", digit_png)), ("files", ("b.png", b"not an image"))] * 2
    assert client.post("/predict/batch", files=files).status_code == 200
    assert sample(client, "digits_answered_digits_total", endpoint="/predict/batch", digit="1") == 2
    assert sample(client, "digits_answer_confidence_count", endpoint="/predict/batch") == 2


def test_recognize_counts_digits_and_review_outcomes(client: TestClient) -> None:
    flagged = post(client, three_digit_png(), threshold=0.99, expected_length=5).json()
    assert flagged["needs_review"]
    clean = post(client, three_digit_png(), threshold=0.5).json()
    assert not clean["needs_review"]
    assert sample(client, "digits_answered_digits_total", endpoint="/recognize", digit="1") == 6
    assert sample(client, "digits_answer_confidence_sum", endpoint="/recognize") == pytest.approx(
        6 * CONSTANT_CONFIDENCE, rel=1e-5
    )
    assert sample(client, "digits_recognize_answers_total", needs_review="true") == 1
    assert sample(client, "digits_recognize_answers_total", needs_review="false") == 1
    # Three digits below the threshold count once, as one reading flagged for low confidence.
    assert sample(client, "digits_recognize_reviews_total", reason="low_confidence") == 1
    assert sample(client, "digits_recognize_reviews_total", reason="length_mismatch") == 1
    assert sample(client, "digits_recognize_reviews_total", reason="cut_by_the_edge") == 0


def test_review_reason_series_exist_before_any_review(client: TestClient) -> None:
    for code in REVIEW_REASONS:
        assert (
            client.app.state.telemetry.registry.get_sample_value(  # type: ignore[attr-defined]
                "digits_recognize_reviews_total", {"reason": code}
            )
            == 0
        )


def test_every_reason_carries_its_own_code() -> None:
    uncertain_count = Reading(candidates=(0, 1, 2), count_margin=0.0, runner_up=4, margin=0.0)
    uncertain_cut = Reading(candidates=(0, 1, 2), count_margin=99.0, runner_up=2, margin=0.0)
    first = review_reasons([0.5, 0.99, 0.1], 0.98, 5, uncertain_count)
    second = review_reasons([0.99, 0.99, 0.99], 0.98, None, uncertain_cut, [False, True, False])
    assert [(r.code.value, r.position) for r in first + second] == [
        ("length_mismatch", None),
        ("count_uncertain", None),
        ("low_confidence", 1),
        ("low_confidence", 3),
        ("not_digit_like", 2),
        ("cut_uncertain", None),
    ], first + second


def test_the_metric_labels_are_the_reason_codes() -> None:
    assert set(REVIEW_REASONS) == {code.value for code in ReasonCode}


def test_a_geometry_reason_is_counted_under_its_own_code(client: TestClient) -> None:
    telemetry: Telemetry = client.app.state.telemetry  # type: ignore[attr-defined]
    telemetry.observe_review([ReasonCode.OFF_THE_LINE, ReasonCode.OFF_THE_LINE])
    assert sample(client, "digits_recognize_reviews_total", reason="off_the_line") == 1
    assert sample(client, "digits_recognize_answers_total", needs_review="true") == 1


def test_probe_accuracy_is_a_gauge_per_version(client: TestClient) -> None:
    telemetry: Telemetry = client.app.state.telemetry  # type: ignore[attr-defined]
    telemetry.set_probe_accuracy(3, 0.97)
    telemetry.set_probe_accuracy(4, 1.0)
    telemetry.set_probe_accuracy(3, 0.95)
    assert sample(client, "digits_model_probe_accuracy", version="3") == 0.95
    assert sample(client, "digits_model_probe_accuracy", version="4") == 1.0
    text = client.get("/metrics", headers={"Accept": "text/plain"}).text
    assert 'digits_model_probe_accuracy{version="4"} 1.0' in text


def test_the_served_version_publishes_its_own_probe_accuracy(client: TestClient) -> None:
    served = client.app.state.store.current  # type: ignore[attr-defined]
    assert served.probe is not None
    # The tiny model answers 1 for everything: it reads only the probe's ones.
    assert 0.0 < served.probe.accuracy < 0.5
    published = sample(client, "digits_model_probe_accuracy", version=str(served.version))
    assert published == served.probe.accuracy


@pytest.fixture
def digit_png() -> bytes:
    """A photo of a handwritten 7, as a PNG."""
    ink, _ = draw_string([seven])
    return encode(as_photo(ink))
