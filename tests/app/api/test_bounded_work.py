"""Work bounded per request (issue 9): every limit is checked before the work it bounds.

Counts and sizes are checked here (what reached the expensive step, and at what size), not
times; tests/ops/test_hostile_work.py replays the attacks against a real server.
"""

from __future__ import annotations

import io
import itertools
import threading
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

import app.reading.decode
import app.reading.lattice
import app.reading.normalize
from app.api.routes import predict as predict_module
from app.core.deadline import check_deadline, current_deadline, request_deadline
from app.core.errors import DOMAIN_STATUS, DomainError
from app.main import create_app
from app.reading.decode import open_image, run_in_image_slot, run_in_large_image_slot
from app.reading.lattice import MAX_WORK_PIXELS, MAX_WORK_SIDE, build_lattice, find_candidates
from app.reading.normalize import center_digit, prepare_digit
from app.reading.reader import best_partition, choose_reading
from app.serving.output_check import check_output
from harness.attacks import (
    bar_png,
    long_stroke_png,
    progressive_jpeg_with_repeated_scan,
)
from tests.app.conftest import ModelsDir, encode, make_settings

# --- JPEG scans ------------------------------------------------------------------------------


def test_a_jpeg_with_too_many_scans_is_refused_from_its_bytes() -> None:
    data = progressive_jpeg_with_repeated_scan(64, 100)
    with pytest.raises(DomainError) as caught:
        open_image(data, max_pixels=10**6, max_jpeg_scans=32)
    assert DOMAIN_STATUS[caught.value.code] == 422
    assert caught.value.code == "too_many_jpeg_scans"
    assert caught.value.details is not None
    assert caught.value.details["scans"] > 100
    assert "progressive" in caught.value.message
    # Under a cap that allows them, the same file is an ordinary (blank) image.
    img = open_image(data, max_pixels=10**6, max_jpeg_scans=1_000)
    assert img.size == (64, 64)


def test_an_ordinary_progressive_jpeg_is_read() -> None:
    photo = Image.new("L", (600, 600), 230)
    ImageDraw.Draw(photo).line([(300, 100), (300, 500)], fill=20, width=40)
    data = encode(photo, "JPEG", progressive=True, quality=90)
    assert 1 < data.count(b"\xff\xda") <= app.reading.decode.MAX_JPEG_SCANS
    image, normalized = prepare_digit(data, normalize="auto", max_pixels=10**6)
    assert normalized
    assert image.shape == (28, 28)
    assert image.max() == 255


# --- reduced before float work and before thickening ----------------------------------------


def test_thickening_never_works_on_more_than_the_working_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shapes: list[tuple[int, ...]] = []
    real = app.reading.normalize._thicken

    def spy(crop: np.ndarray) -> np.ndarray:
        shapes.append(crop.shape)
        return real(crop)

    monkeypatch.setattr(app.reading.normalize, "_thicken", spy)
    stroke = np.zeros((20_000, 3), np.float32)
    stroke[:, 1] = 1.0
    digit = center_digit(stroke)
    assert shapes
    assert max(max(shape) for shape in shapes) <= 512
    assert digit.max() == 255  # the stroke is still there, upright in the middle
    assert digit[:, 14].sum() > digit[:, 4].sum()


def _record_grayscale(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    sizes: list[tuple[int, int]] = []
    real = app.reading.lattice.to_grayscale

    def spy(img: Image.Image) -> Any:
        sizes.append(img.size)
        return real(img)

    monkeypatch.setattr(app.reading.lattice, "to_grayscale", spy)
    return sizes


def test_segmentation_reduces_a_large_photo_before_any_float_array(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sizes = _record_grayscale(monkeypatch)
    photo = Image.new("L", (3_000, 2_000), 235)
    draw = ImageDraw.Draw(photo)
    for left in (600, 1_400, 2_200):
        draw.line([(left, 500), (left, 1_500)], fill=20, width=60)
    lattice = find_candidates(photo, max_digits=12)
    [(width, height)] = sizes
    assert width * height <= MAX_WORK_PIXELS * 1.01
    reading = choose_reading(lattice, None)
    boxes = [lattice.candidates[i].box for i in reading.candidates]
    # Boxes come back in the photo's own pixels.
    assert [round((b.x + b.width / 2) / 100) for b in boxes] == [6, 14, 22]


def test_a_very_long_thin_image_is_reduced_along_its_long_side(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sizes = _record_grayscale(monkeypatch)
    img = Image.open(io.BytesIO(long_stroke_png(96_000, 32_000)))
    lattice = find_candidates(img, max_digits=12)
    [(width, height)] = sizes
    assert max(width, height) <= MAX_WORK_SIDE
    reading = choose_reading(lattice, None)
    [index] = reading.candidates
    box = lattice.candidates[index].box
    assert abs(box.height - 32_000) <= 100  # in the upload's pixels
    assert abs(box.y - 32_000) <= 100


# --- caps on components and cuts -------------------------------------------------------------


def test_a_long_bar_is_refused_before_any_candidate_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    groups: list[int] = []
    real_group = app.reading.lattice._group_ink

    def spy(atoms: list[Any], *args: Any) -> Any:
        groups.append(len(atoms))
        return real_group(atoms, *args)

    monkeypatch.setattr(app.reading.lattice, "_group_ink", spy)
    img = Image.open(io.BytesIO(bar_png(20_000, 50, 4)))
    with pytest.raises(DomainError) as caught:
        find_candidates(img, max_digits=12)
    assert DOMAIN_STATUS[caught.value.code] == 422
    assert caught.value.code == "too_many_digits"
    assert "at least" in caught.value.message
    assert caught.value.details is not None
    assert caught.value.details["found"] > 12
    assert groups == []


def test_cut_search_stops_at_its_limit() -> None:
    flat = np.ones(20_000, np.float64)
    cuts = app.reading.lattice._cut_columns(flat, 4.0, limit=60)
    assert len(cuts) == 61
    assert cuts == sorted(cuts)
    # Without a limit: the same greedy choice, sorted, as before the limit existed.
    profile = np.abs(np.sin(np.arange(400) / 9.0)) * 10
    unlimited = app.reading.lattice._cut_columns(profile, 40.0)
    assert unlimited == sorted(unlimited)
    assert all(b - a >= 0.12 * 40.0 for a, b in itertools.pairwise(unlimited))


def test_a_page_of_marks_is_refused_from_counts_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    merged: list[int] = []
    monkeypatch.setattr(
        app.reading.lattice,
        "merge_fragments",
        lambda parts, height: merged.append(len(parts)),
    )
    ink = np.zeros((1_000, 1_000), np.float32)
    for top in range(20, 980, 40):
        for left in range(20, 980, 20):
            ink[top : top + 25, left : left + 5] = 1.0
    with pytest.raises(DomainError) as caught:
        build_lattice(ink, max_digits=12)
    assert caught.value.code == "too_many_digits"
    assert caught.value.details == {"found": 24 * 48, "max_digits": 12}
    assert merged == []  # refused before one object per mark was made


# --- the reader never trusts scores that are not probabilities -------------------------------


def _lattice() -> app.reading.lattice.Lattice:
    ink = np.zeros((80, 200), np.float32)
    for left in (30, 90, 150):
        ink[10:70, left : left + 8] = 1.0
    return build_lattice(ink, max_digits=12)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda p: np.full_like(p, np.nan),
        lambda p: np.where(np.arange(10) == 3, np.nan, p),
        lambda p: np.full_like(p, np.inf),
        lambda p: p[:, :9],
        lambda p: p[:-1],
    ],
    ids=["all NaN", "one NaN", "infinite", "9 classes", "missing rows"],
)
@pytest.mark.timeout(30)
def test_the_reader_refuses_scores_it_cannot_bound(corrupt: Any) -> None:
    # Scores out of [0, 1] are refused where the model answers (tests/app/serving/
    # test_output_check.py); whatever calls the reader, these never reach its search.
    lattice = _lattice()
    good = np.full((len(lattice.candidates), 10), 0.01, np.float32)
    good[:, 1] = 0.91
    assert len(choose_reading(lattice, good).candidates) == 3
    with pytest.raises(DomainError) as caught:
        choose_reading(lattice, corrupt(good), max_digits=12)
    assert DOMAIN_STATUS[caught.value.code] == 503
    assert caught.value.code == "model_output_invalid"


@pytest.mark.timeout(30)
def test_the_best_reading_search_ends_on_scores_that_are_nan() -> None:
    lattice = _lattice()
    with pytest.raises(DomainError) as caught:
        best_partition(lattice, np.full(len(lattice.candidates), np.nan))
    assert caught.value.code == "model_output_invalid"


# --- the deadline and the large-image threads ------------------------------------------------


def test_the_deadline_stops_work_with_a_clear_error() -> None:
    check_deadline()  # outside any request: no deadline
    with request_deadline(0.0), pytest.raises(DomainError) as caught:
        check_deadline()
    assert DOMAIN_STATUS[caught.value.code] == 503
    assert caught.value.code == "deadline_exceeded"
    assert caught.value.details == {"deadline_seconds": 0.0}
    assert current_deadline() is None


def test_large_image_work_runs_on_its_own_threads_with_the_request_deadline() -> None:
    small, large = Image.new("L", (100, 100)), Image.new("L", (2_000, 1_000))
    here = threading.get_ident()
    with request_deadline(60.0) as deadline:
        assert run_in_image_slot(small, threading.get_ident) == here
        assert run_in_image_slot(large, threading.get_ident) != here
        assert run_in_image_slot(large, current_deadline) is deadline


def test_waiting_for_a_large_image_thread_ends_at_the_deadline() -> None:
    release = threading.Event()
    started = threading.Barrier(3)

    def occupy() -> None:
        started.wait()
        release.wait(30)

    blockers = [threading.Thread(target=run_in_large_image_slot, args=(occupy,)) for _ in range(2)]
    for thread in blockers:
        thread.start()
    try:
        started.wait(10)
        with request_deadline(0.2), pytest.raises(DomainError) as caught:
            run_in_large_image_slot(lambda: None)
        assert caught.value.code == "deadline_exceeded"
    finally:
        release.set()
        for thread in blockers:
            thread.join(10)


# --- the routes ------------------------------------------------------------------------------


@pytest.fixture
def model_one(models: ModelsDir) -> ModelsDir:
    models.add(1, digit=1)
    return models


def _client(models: ModelsDir, **settings: Any) -> TestClient:
    return TestClient(create_app(make_settings(models.path, **settings)))


def _png(side: int) -> bytes:
    img = Image.new("L", (side, side), 235)
    ImageDraw.Draw(img).line([(side // 2, side // 5), (side // 2, 4 * side // 5)], 20, side // 12)
    return encode(img)


@pytest.fixture
def never_decoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = predict_module.prepare_opened

    def spy(img: Image.Image, **kwargs: Any) -> Any:
        calls.append(img.width * img.height)
        return real(img, **kwargs)

    monkeypatch.setattr(predict_module, "prepare_opened", spy)
    return calls


def test_a_batch_over_the_pixel_budget_is_refused_before_any_image_is_decoded(
    model_one: ModelsDir, never_decoded: list[int]
) -> None:
    files = [("files", (f"{i}.png", _png(100), "image/png")) for i in range(6)]
    with _client(model_one, max_request_pixels=50_000) as client:
        response = client.post("/predict/batch", files=files)
        assert response.status_code == 413
        error = response.json()["error"]
        assert error["code"] == "too_many_pixels"
        assert error["details"] == {"pixels": 60_000, "max_request_pixels": 50_000, "files": 6}
        assert "split the batch" in error["message"]
        assert never_decoded == []
        # Within the budget the same images are read.
        response = client.post("/predict/batch", files=files[:5])
        assert response.status_code == 200
        assert len(never_decoded) == 5


def test_a_batch_past_its_deadline_stops_with_503(model_one: ModelsDir) -> None:
    files = [("files", (f"{i}.png", _png(1_500), "image/png")) for i in range(40)]
    with _client(model_one, request_deadline_seconds=0.05, max_request_pixels=10**9) as client:
        response = client.post("/predict/batch", files=files)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "deadline_exceeded"
    assert response.headers["Retry-After"] == "1"


def test_the_request_budget_also_bounds_a_single_image(model_one: ModelsDir) -> None:
    with _client(model_one, max_request_pixels=100_000) as client:
        for path in ("/predict", "/recognize"):
            response = client.post(path, files={"file": ("a.png", _png(400), "image/png")})
            assert response.status_code == 413, path
            assert response.json()["error"]["code"] == "image_too_large"


def test_a_jpeg_with_too_many_scans_is_refused_by_every_endpoint(model_one: ModelsDir) -> None:
    data = progressive_jpeg_with_repeated_scan(300, 50)
    with _client(model_one, max_jpeg_scans=20) as client:
        for path, field in (
            ("/predict", "file"),
            ("/recognize", "file"),
            ("/predict/batch", "files"),
        ):
            response = client.post(path, files={field: ("a.jpg", data, "image/jpeg")})
            if path == "/predict/batch":
                assert response.status_code == 200
                [result] = response.json()["results"]
                assert result["error"]["code"] == "too_many_jpeg_scans"
            else:
                assert response.status_code == 422, path
                assert response.json()["error"]["code"] == "too_many_jpeg_scans"


@pytest.mark.parametrize(
    ("probabilities", "digit"),
    [(np.full(10, 0.1, np.float32), 12), (np.full(10, np.nan, np.float32), 3)],
    ids=["digit 12", "NaN scores"],
)
def test_a_model_answer_that_is_not_a_digit_is_refused(
    probabilities: np.ndarray, digit: int
) -> None:
    # The one check every door's answer passes (LoadedModel.predict calls it).
    with pytest.raises(DomainError) as caught:
        check_output(probabilities[None, :], np.array([digit]), 1)
    assert DOMAIN_STATUS[caught.value.code] == 503
    assert caught.value.code == "model_output_invalid"
