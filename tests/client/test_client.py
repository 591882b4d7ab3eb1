"""The client against the real service (launcher, one worker, bundled models), with an API key
and request limits set low enough that a small folder crosses each of them."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from digits_client import ApiError, AsyncClient, Client, ItemResult, Limits
from digits_client.imagesize import image_pixels
from PIL import Image

from harness.servers import RunningServer
from tests.client.conftest import EXAMPLES, digit_files, photo, start_server

pytestmark = pytest.mark.slow

KEY = "client-test-key"
#: The server's limits (DIGITS_*), and the same as the client's Limits.
LIMITS = Limits(
    max_files=32, max_bytes=400_000, max_request_pixels=3_000_000, max_image_pixels=2_000_000
)
SERVER_ENV = {
    "DIGITS_API_KEY": KEY,
    "DIGITS_MAX_BATCH_SIZE": str(LIMITS.max_files),
    "DIGITS_MAX_UPLOAD_BYTES": str(LIMITS.max_bytes),
    "DIGITS_MAX_REQUEST_PIXELS": str(LIMITS.max_request_pixels),
    "DIGITS_MAX_IMAGE_PIXELS": str(LIMITS.max_image_pixels),
}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(tmp_path_factory.mktemp("limited") / "server.log", SERVER_ENV)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Big and small files: 70 digits, 10 photos of ~90 KB, 2 images over the pixel limit of
    one image, one photo too large to send at all."""
    root = tmp_path_factory.mktemp("scans")
    digit_files(root / "digits", 70)
    for index in range(10):
        (root / "photos" / f"photo-{index}.jpg").parent.mkdir(exist_ok=True)
        (root / "photos" / f"photo-{index}.jpg").write_bytes(photo(480, 360, seed=index))
    for index in range(2):
        buffer = io.BytesIO()
        Image.new("L", (1500, 1500), 255).save(buffer, "PNG")
        (root / f"huge-{index}.png").write_bytes(buffer.getvalue())
    (root / "too-big.jpg").write_bytes(photo(1000, 800, seed=99))
    return root


class Recorder:
    """What each request sent and what it got, from httpx's event hooks."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, int, int]] = []  # body bytes, files, pixels
        self.statuses: list[int] = []

    def request(self, request: httpx.Request) -> None:
        body = request.read()
        parts = body.split(b"Content-Type: ")[1:]
        pixels = 0
        for part in parts:
            declared = image_pixels(part.split(b"\r\n\r\n", 1)[1]) or 0
            # As the service counts: an image over the one-image limit is refused alone.
            pixels += declared if declared <= LIMITS.max_pixels else 0
        self.sent.append((len(body), body.count(b'name="files"'), pixels))

    def response(self, response: httpx.Response) -> None:
        self.statuses.append(response.status_code)

    def http(self, url: str) -> httpx.Client:
        hooks = {"request": [self.request], "response": [self.response]}
        return httpx.Client(base_url=url, timeout=60, event_hooks=hooks)  # type: ignore[dict-item]


def scans(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_batches_stay_within_every_limit_and_every_file_is_answered(
    limited: RunningServer, folder: Path
) -> None:
    recorder = Recorder()
    files = scans(folder)
    with Client(api_key=KEY, limits=LIMITS, http_client=recorder.http(limited.url)) as client:
        results = client.predict_many(files)
    assert 413 not in recorder.statuses, "no batch was refused for its size"
    assert set(recorder.statuses) == {200}
    for body, count, pixels in recorder.sent:
        assert body <= LIMITS.max_bytes
        assert count <= LIMITS.max_files
        assert pixels <= LIMITS.max_request_pixels
    assert len(recorder.sent) >= 4, "the photos alone need several batches"
    by_name = {path.name: result for path, result in zip(files, results, strict=True)}
    assert [r.index for r in results] == list(range(len(files)))
    assert sum(r.prediction is not None for r in results) == 80  # 70 digits and 10 photos
    for name in ("huge-0.png", "huge-1.png"):
        error = by_name[name].error
        assert error is not None
        assert error.code == "image_too_large"
    too_big = by_name["too-big.jpg"].error
    assert too_big is not None
    assert too_big.code == "payload_too_large"  # refused by the client, never sent
    assert all(r.prediction.model_version == 2 for r in results if r.prediction is not None), (
        "each item carries its batch's model version"
    )


def test_default_limits_are_tightened_by_the_services_413s(
    limited: RunningServer, folder: Path
) -> None:
    recorder = Recorder()
    files = scans(folder)
    with Client(api_key=KEY, http_client=recorder.http(limited.url)) as client:
        results = client.predict_many(files)
        learned = client.limits
    assert 0 < recorder.statuses.count(413) <= 4, "a refusal per limit learned, no more"
    assert learned.max_bytes == LIMITS.max_bytes
    assert learned.max_files <= LIMITS.max_files
    assert sum(r.prediction is not None for r in results) == 80
    assert {r.error.code for r in results if r.error is not None} == {
        "image_too_large",
        "payload_too_large",
    }


def test_the_examples_read_as_documented(limited: RunningServer) -> None:
    with Client(limited.url, api_key=KEY) as client:
        three = client.predict(EXAMPLES / "digit.png")
        assert (three.digit, three.model_version, three.normalized) == (3, 2, True)
        assert len(three.probabilities) == 10
        batch = client.predict_batch([EXAMPLES / "digit.png", EXAMPLES / "digit-7.png"])
        assert [r.prediction.digit for r in batch.results if r.prediction] == [3, 7]
        assert [r.filename for r in batch.results] == ["digit.png", "digit-7.png"]
        code = client.recognize(EXAMPLES / "postal-code.png", expected_length=5)
        assert (code.digits, code.needs_review, code.review_reasons) == ("75011", False, [])
        assert len(code.segments) == 5
        flagged = client.recognize(EXAMPLES / "postal-code.png", expected_length=6)
        assert flagged.needs_review
        assert [r.code for r in flagged.review_reasons] == ["length_mismatch"]
        info = client.model()
        assert (info.ready, info.version) == (True, 2)
        assert info.signature is not None
        assert info.signature.name == "serving_default"
        assert client.ready().model_version == 2
        assert client.live().status == "alive"


def test_a_missing_or_wrong_key_is_a_fatal_401(limited: RunningServer) -> None:
    for key, code in [(None, "missing_api_key"), ("wrong", "invalid_api_key")]:
        with Client(limited.url, api_key=key) as client, pytest.raises(ApiError) as raised:
            client.predict(EXAMPLES / "digit.png")
        assert (raised.value.status, raised.value.code) == (401, code)
        assert raised.value.fatal


def test_an_unsized_batch_over_a_limit_is_refused_whole(limited: RunningServer) -> None:
    with Client(limited.url, api_key=KEY) as client, pytest.raises(ApiError) as raised:
        client.predict_batch([EXAMPLES / "digit.png"] * (LIMITS.max_files + 1))
    assert (raised.value.status, raised.value.code) == (413, "too_many_files")
    assert raised.value.details["max_files"] == LIMITS.max_files


def test_the_async_client_answers_as_the_sync_one(limited: RunningServer, folder: Path) -> None:
    files = scans(folder)
    with Client(limited.url, api_key=KEY, limits=LIMITS) as client:
        expected = client.predict_many(files)

    async def main() -> list[object]:
        async with AsyncClient(limited.url, api_key=KEY, limits=LIMITS) as client:
            many = await client.predict_many(files, concurrency=3)
            one = await client.recognize(EXAMPLES / "postal-code.png")
            assert one.digits == "75011"
            assert (await client.model()).version == 2
            return list(many)

    answered = asyncio.run(main())
    assert len(answered) == len(expected)
    for mine, theirs in zip(answered, expected, strict=True):
        assert isinstance(mine, ItemResult)
        assert (mine.index, mine.filename, mine.error) == (
            theirs.index,
            theirs.filename,
            theirs.error,
        )
        if theirs.prediction is not None:
            assert mine.prediction is not None
            assert mine.prediction.digit == theirs.prediction.digit
            # Batched differently, the same image may differ in the last bits of a float.
            assert mine.prediction.confidence == pytest.approx(
                theirs.prediction.confidence, abs=1e-6
            )
