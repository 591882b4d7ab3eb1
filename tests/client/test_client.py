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
from tests.client.conftest import EXAMPLES, SERVED_VERSION, digit_files, photo, start_server

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
    assert all(
        r.prediction.model_version == SERVED_VERSION for r in results if r.prediction is not None
    ), "each item carries its batch's model version"


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
        assert (three.digit, three.model_version, three.normalized) == (3, SERVED_VERSION, True)
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
        assert (info.ready, info.version) == (True, SERVED_VERSION)
        assert info.signature is not None
        assert info.signature.name == "serving_default"
        assert client.ready().model_version == SERVED_VERSION
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
            assert (await client.model()).version == SERVED_VERSION
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


def test_single_images_go_as_the_body_and_the_service_takes_them(limited: RunningServer) -> None:
    sent: list[str] = []

    def record(request: httpx.Request) -> None:
        sent.append(request.headers["content-type"])

    http = httpx.Client(base_url=limited.url, timeout=60, event_hooks={"request": [record]})
    with Client(api_key=KEY, http_client=http) as client:
        assert client.predict(EXAMPLES / "digit.png").digit == 3
        assert client.predict((EXAMPLES / "digit-7.png").read_bytes()).digit == 7
        assert client.predict(EXAMPLES / "digit.png", normalize="always", queue=None).digit == 3
        assert client.recognize(EXAMPLES / "postal-code.png").digits == "75011"
        jpeg = client.predict(photo(120, 90))  # bytes: the service finds out it is a JPEG
        assert 0 <= jpeg.digit <= 9
        with pytest.raises(ApiError) as raised:
            client.recognize(b"not an image")
    http.close()
    assert sent == [
        "image/png",
        "application/octet-stream",
        "image/png",
        "image/png",
        "application/octet-stream",
        "application/octet-stream",
    ]
    assert (raised.value.status, raised.value.code) == (400, "not_an_image")


def test_recognize_many_reads_strings_in_batches_within_the_limits(
    limited: RunningServer, tmp_path: Path
) -> None:
    code = (EXAMPLES / "postal-code.png").read_bytes()
    for index in range(40):
        (tmp_path / f"code-{index:02d}.png").write_bytes(code)
    buffer = io.BytesIO()
    Image.new("L", (1500, 1500), 255).save(buffer, "PNG")
    (tmp_path / "huge.png").write_bytes(buffer.getvalue())
    (tmp_path / "too-big.jpg").write_bytes(photo(1000, 800, seed=99))
    (tmp_path / "bad.png").write_text("not an image")
    files = sorted(tmp_path.iterdir())
    recorder = Recorder()
    with Client(api_key=KEY, limits=LIMITS, http_client=recorder.http(limited.url)) as client:
        results = client.recognize_many(files, expected_length=5)
        alone = client.recognize(tmp_path / "code-00.png", expected_length=5)
    assert set(recorder.statuses) == {200}
    batches = recorder.sent[:-1]
    assert len(batches) >= 2, "40 strings need two batches of at most 32"
    for body, count, pixels in batches:
        assert body <= LIMITS.max_bytes
        assert count <= LIMITS.max_files
        assert pixels <= LIMITS.max_request_pixels
    by_name = {path.name: result for path, result in zip(files, results, strict=True)}
    assert [r.index for r in results] == list(range(len(files)))
    codes = [by_name[f"code-{i:02d}.png"].reading for i in range(40)]
    assert all(r is not None and r.digits == "75011" and not r.needs_review for r in codes)
    assert codes[0] is not None
    assert codes[0].confidence == pytest.approx(alone.confidence, abs=1e-6), "as read alone"
    for name, code_expected in [
        ("huge.png", "image_too_large"),
        ("too-big.jpg", "payload_too_large"),
        ("bad.png", "not_an_image"),
    ]:
        error = by_name[name].error
        assert error is not None
        assert error.code == code_expected
