"""Batches are planned within every limit of the service, counted as the service counts them."""

from __future__ import annotations

import random

import httpx
import pytest
from digits_client.batching import (
    Limits,
    Upload,
    plan_batches,
    refusal,
    request_bytes,
    resplit,
)
from digits_client.errors import ApiError

from tests.client.conftest import photo


def fake(size: int, pixels: int | None, name: str = "scan.png") -> Upload:
    return Upload(name, b"x" * size, "image/png", pixels)


def body_bytes(uploads: list[Upload]) -> int:
    """The body httpx really sends for these uploads in one /predict/batch request."""
    files = [("files", (u.filename, u.data, u.content_type)) for u in uploads]
    request = httpx.Request("POST", "http://127.0.0.1/predict/batch", files=files)
    return len(request.read())


def test_the_body_estimate_is_an_upper_bound_of_what_httpx_sends() -> None:
    names = ["a.png", "scan 001.jpeg", 'quote"and\\slash.png', "ümlaut-é.png", "x" * 200 + ".png"]
    uploads = [fake(100 * i, None, name) for i, name in enumerate(names)]
    for count in range(1, len(uploads) + 1):
        sent = body_bytes(uploads[:count])
        assert sent <= request_bytes(uploads[:count])
        # and not wildly above it: a generous framing, not a guess
        assert request_bytes(uploads[:count]) - sent < 1000 * count


def check_plan(batches: list[list[Upload]], uploads: list[Upload], limits: Limits) -> None:
    assert [u for batch in batches for u in batch] == uploads, "every item once, in order"
    for batch in batches:
        assert 1 <= len(batch) <= limits.max_files
        assert request_bytes(batch) <= limits.max_bytes
        assert body_bytes(batch) <= limits.max_bytes
        assert sum(u.counted_pixels(limits) for u in batch) <= limits.max_request_pixels


def test_random_folders_are_planned_within_every_limit() -> None:
    rng = random.Random(7)
    limits = Limits(max_files=16, max_bytes=60_000, max_request_pixels=400_000)
    for _ in range(30):
        uploads = [
            fake(
                rng.choice([rng.randint(50, 2_000), rng.randint(10_000, 50_000)]),
                rng.choice([None, 784, rng.randint(1_000, 300_000), 30_000_000]),
            )
            for _ in range(rng.randint(1, 120))
        ]
        sendable = [u for u in uploads if refusal(u, limits) is None]
        batches = list(plan_batches(sendable, limits, lambda u: u))
        check_plan(batches, sendable, limits)


def test_phone_photos_are_split_by_bytes_not_count() -> None:
    # The motivating case: 100 photos of ~92 KB fit the file count but not 5 MiB together.
    photos = [fake(92_000, 4032 * 3024 // 16) for _ in range(100)]
    limits = Limits()
    batches = list(plan_batches(photos, limits, lambda u: u))
    check_plan(batches, photos, limits)
    assert len(batches) == 2
    assert len(batches[0]) == 56  # as many as 5 MiB holds


def test_large_images_are_split_by_pixels() -> None:
    scans = [fake(1_000, 12_000_000) for _ in range(10)]
    batches = list(plan_batches(scans, Limits(), lambda u: u))
    assert [len(batch) for batch in batches] == [4, 4, 2]  # 50 M pixels a request


def test_an_image_over_the_per_image_limit_counts_no_pixels() -> None:
    # The service refuses it as an item (image_too_large) before counting it in the request.
    limits = Limits()
    huge = fake(1_000, 30_000_000)
    assert huge.counted_pixels(limits) == 0
    assert len(list(plan_batches([huge, huge, huge], limits, lambda u: u))) == 1


def test_max_files_caps_batches_below_the_limit() -> None:
    uploads = [fake(10, 784) for _ in range(10)]
    batches = list(plan_batches(uploads, Limits(), lambda u: u, max_files=3))
    assert [len(batch) for batch in batches] == [3, 3, 3, 1]


def test_a_file_too_large_to_send_alone_is_refused_before_sending() -> None:
    limits = Limits(max_bytes=10_000)
    error = refusal(fake(20_000, 784), limits)
    assert error is not None
    assert (error.status, error.code) == (413, "payload_too_large")
    assert "10,000 bytes" in error.message
    assert refusal(fake(9_000, 784), limits) is None


def test_real_photo_sizes_come_from_their_headers() -> None:
    upload = Upload.of("photo.jpg", photo(400, 300))
    assert upload.pixels == 120_000
    assert upload.content_type == "image/jpeg"
    assert Upload.of("notes.txt", b"hello").pixels is None


@pytest.mark.parametrize(
    ("code", "details", "changed"),
    [
        ("payload_too_large", {"max_bytes": 1_000_000}, {"max_bytes": 1_000_000}),
        ("too_many_files", {"max_files": 8, "files": 9}, {"max_files": 8}),
        ("too_many_pixels", {"max_request_pixels": 9, "pixels": 99}, {"max_request_pixels": 9}),
        ("image_too_large", {"max_pixels": 5_000}, {"max_image_pixels": 5_000}),
    ],
)
def test_a_413_teaches_the_limit_it_reports(
    code: str, details: dict[str, int], changed: dict[str, int]
) -> None:
    limits = Limits()
    tighter = limits.tightened(ApiError(413, code, "too big", details))
    assert tighter is not None
    for name, value in changed.items():
        assert getattr(tighter, name) == value
    # A limit that is not tighter teaches nothing; nor does another status.
    assert tighter.tightened(ApiError(413, code, "too big", details)) is None
    assert limits.tightened(ApiError(422, code, "no", details)) is None


def test_a_refused_batch_is_cut_within_the_limits_reported() -> None:
    batch = [fake(1_000, 784) for _ in range(10)]
    error = ApiError(413, "payload_too_large", "too big", {"max_bytes": 5_000})
    again = resplit(batch, error, Limits(), lambda u: u)
    assert again is not None
    limits, parts = again
    assert limits.max_bytes == 5_000
    check_plan(parts, batch, limits)
    # A refusal that reports nothing new still halves; a failure of the service (500) too.
    for error in (ApiError(413, "too_many_pixels", "?"), ApiError(500, "internal_error", "?")):
        again = resplit(batch, error, Limits(), lambda u: u)
        assert again is not None
        assert [len(p) for p in again[1]] == [5, 5]
    # One image's refusal is its own; other errors are no batch's size.
    assert resplit(batch[:1], error, Limits(), lambda u: u) is None
    assert resplit(batch, ApiError(401, "invalid_api_key", "?"), Limits(), lambda u: u) is None


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        Limits(max_bytes=0)
