"""Malformed and hostile requests, each with the status and error code the service must answer.

Used by the load test (mixed in with valid traffic) and the memory test. The server they are
sent to runs with the small limits in :data:`LIMITS_ENV`, so the oversized bodies stay small.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import numpy as np
from PIL import Image

from tests.ops.conftest import png

MAX_UPLOAD_BYTES = 256 * 1024
MAX_BATCH_SIZE = 16
LIMITS_ENV = {
    "DIGITS_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
    "DIGITS_MAX_BATCH_SIZE": str(MAX_BATCH_SIZE),
}


@dataclass(frozen=True)
class Hostile:
    """One bad request: what to send and the answer it must get."""

    kind: str
    status: int
    code: str
    path: str = "/predict"
    files: list[tuple[str, bytes]] | None = None
    raw: bytes | None = None
    content_type: str | None = None
    chunked_total: int = 0
    params: dict[str, str] | None = None

    async def send(self, client: httpx.AsyncClient) -> httpx.Response:
        """Send it (a transport error propagates: the caller counts it)."""
        if self.chunked_total:
            return await client.post(
                self.path,
                content=_chunks(self.chunked_total),
                headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
            )
        if self.raw is not None:
            headers = {"Content-Type": self.content_type or "application/octet-stream"}
            return await client.post(self.path, content=self.raw, headers=headers)
        files = [
            (name, (f"f{i}.png", data, "image/png"))
            for i, (name, data) in enumerate(self.files or [])
        ]
        return await client.post(self.path, files=files, params=self.params)


async def _chunks(total: int, size: int = 16_384) -> AsyncIterator[bytes]:
    """A multipart body without Content-Length (chunked), ``total`` bytes long."""
    head = (
        b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )
    yield head
    sent = len(head)
    block = b"\x89" * size
    while sent < total:
        yield block
        sent += size


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid PNG header declaring a huge image over almost no data (decompression bomb)."""
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + _png_chunk(b"IDAT", zlib.compress(bytes(256)))
        + _png_chunk(b"IEND", b"")
    )


def truncated_png(image: np.ndarray) -> bytes:
    """A PNG of a noisy image cut in the middle of its pixel data."""
    noisy = np.random.default_rng(5).integers(0, 256, (64, 64), dtype=np.uint8)
    noisy[:28, :28] = image
    data = png(noisy)
    return data[: len(data) // 2]


def tiff(image: np.ndarray) -> bytes:
    """A TIFF: a real image, in a format the service does not accept."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "TIFF")
    return buffer.getvalue()


def hostile_requests(image: np.ndarray) -> list[Hostile]:
    """One of every kind of bad request, built around a valid digit image."""
    good = png(image)
    return [
        Hostile("garbage bytes", 400, "not_an_image", files=[("file", b"\x00garbage" * 300)]),
        Hostile("truncated PNG", 400, "truncated_image", files=[("file", truncated_png(image))]),
        Hostile("empty file", 400, "empty_file", files=[("file", b"")]),
        Hostile("unsupported format", 415, "unsupported_format", files=[("file", tiff(image))]),
        Hostile("decompression bomb", 413, "image_too_large", files=[("file", bomb_png())]),
        Hostile(
            "blank image",
            422,
            "no_digit_found",
            files=[("file", png(np.zeros((28, 28), np.uint8)))],
        ),
        Hostile("wrong field name", 422, "invalid_request", files=[("image", good)]),
        Hostile(
            "bad query value",
            422,
            "invalid_request",
            files=[("file", good)],
            params={"normalize": "sideways"},
        ),
        Hostile(
            "not multipart",
            422,
            "invalid_request",
            raw=b'{"file": 1}',
            content_type="application/json",
        ),
        Hostile(
            "body over the limit (Content-Length)",
            413,
            "payload_too_large",
            files=[("file", good + bytes(MAX_UPLOAD_BYTES))],
        ),
        Hostile(
            "body over the limit (chunked)",
            413,
            "payload_too_large",
            chunked_total=MAX_UPLOAD_BYTES + 50_000,
        ),
        Hostile(
            "too many files",
            413,
            "too_many_files",
            path="/predict/batch",
            files=[("files", good)] * (MAX_BATCH_SIZE + 1),
        ),
    ]
