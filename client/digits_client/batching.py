"""Batches the service accepts whole: sized by files, bytes and pixels, not by count alone.

``POST /predict/batch`` refuses a whole request (413) that holds more than
``DIGITS_MAX_BATCH_SIZE`` files, a body over ``DIGITS_MAX_UPLOAD_BYTES`` or images holding more
than ``DIGITS_MAX_REQUEST_PIXELS`` pixels together. A hundred phone photos of 92 KB are 256
files or fewer but 9 MB: sent as one batch they are all refused. :class:`BatchPlanner` cuts a
stream of uploads into batches that fit every limit: the body's size is known exactly enough
from the files' sizes (plus the multipart framing, counted generously), the pixels from the
images' headers (:mod:`digits_client.imagesize`), as the service counts them.

The limits are the documented defaults unless told otherwise; a 413 that reports tighter ones
(its ``details``) tightens them (:meth:`Limits.tightened`), so a service configured lower than
the defaults costs one refused request, not a refused run.
"""

from __future__ import annotations

import dataclasses
import mimetypes
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from digits_client.errors import ApiError
from digits_client.imagesize import image_pixels

#: The multipart framing of one file, beyond its bytes and its name: the boundary line, the
#: Content-Disposition and Content-Type headers, the blank line and the closing CRLF (about
#: 130 bytes with httpx's 32-character boundary), rounded up.
PART_OVERHEAD: Final = 192
#: The closing boundary of a multipart body, rounded up.
BODY_OVERHEAD: Final = 64
#: Codes of a whole request refused for its size, whose ``details`` give the limit.
SIZE_CODES: Final = frozenset(
    {"payload_too_large", "too_many_pixels", "too_many_files", "image_too_large"}
)


@dataclass(frozen=True)
class Limits:
    """What one request to the service may hold; the defaults are the service's documented ones.

    Each is the service's ``DIGITS_*`` setting of the same name: ``max_files`` is
    ``DIGITS_MAX_BATCH_SIZE``, ``max_bytes`` ``DIGITS_MAX_UPLOAD_BYTES``,
    ``max_request_pixels`` and ``max_image_pixels`` the settings of those names.
    """

    max_files: int = 256
    max_bytes: int = 5 * 1024 * 1024
    max_request_pixels: int = 50_000_000
    max_image_pixels: int = 25_000_000

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if getattr(self, field.name) < 1:
                raise ValueError(f"{field.name} must be at least 1")

    @property
    def max_pixels(self) -> int:
        """The most pixels one image may have: its own limit, within the request's."""
        return min(self.max_image_pixels, self.max_request_pixels)

    def tightened(self, error: ApiError) -> Limits | None:
        """The limits a 413 reports when they are tighter than these; None when it tells none."""
        if error.status != 413:
            return None
        reported = {
            "max_bytes": error.details.get("max_bytes"),
            "max_files": error.details.get("max_files"),
            "max_request_pixels": error.details.get("max_request_pixels"),
            "max_image_pixels": error.details.get("max_pixels"),
        }
        changes = {
            name: value
            for name, value in reported.items()
            if isinstance(value, int) and 0 < value < getattr(self, name)
        }
        return dataclasses.replace(self, **changes) if changes else None


@dataclass(frozen=True)
class Upload:
    """One file to send: its name, its bytes and the pixels its header declares."""

    filename: str
    data: bytes
    content_type: str
    pixels: int | None
    """Width × height from the header; None for a format the header parser does not know."""

    @classmethod
    def of(cls, filename: str, data: bytes) -> Upload:
        """An upload of ``data``, its type guessed from the name, its pixels from the header."""
        guessed, _ = mimetypes.guess_type(filename)
        return cls(filename, data, guessed or "application/octet-stream", image_pixels(data))

    @property
    def part_bytes(self) -> int:
        """An upper bound of the bytes this file takes in a multipart body."""
        # A name's characters may be escaped (%XX) in the header: three bytes each at most.
        name = 3 * len(self.filename.encode("utf-8"))
        return PART_OVERHEAD + name + len(self.content_type) + len(self.data)

    def counted_pixels(self, limits: Limits) -> int:
        """The pixels the service counts against the request: an image it opens.

        One over the per-image limit is refused by itself as an item and counts nothing; so
        does a file the service cannot read as an image.
        """
        if self.pixels is None or self.pixels > limits.max_pixels:
            return 0
        return self.pixels


def request_bytes(uploads: Iterable[Upload]) -> int:
    """An upper bound of the body of one request holding ``uploads``."""
    return BODY_OVERHEAD + sum(upload.part_bytes for upload in uploads)


def refusal(upload: Upload, limits: Limits) -> ApiError | None:
    """The 413 the service would answer this file even alone, or None when it can be sent.

    Only the body's size is decided here: a file over the pixel limit is sent, and the
    service answers it as an item (``image_too_large``) with its own message.
    """
    size = request_bytes([upload])
    if size <= limits.max_bytes:
        return None
    return ApiError(
        413,
        "payload_too_large",
        f"The file is {len(upload.data):,} bytes; one request to the service may hold at most "
        f"{limits.max_bytes:,} bytes (DIGITS_MAX_UPLOAD_BYTES), so it was not sent. Resize it "
        "or send it to a service with a larger limit.",
        details={"max_bytes": limits.max_bytes, "bytes": size},
    )


T = TypeVar("T")


class BatchPlanner(Generic[T]):
    """Cuts items, in order, into batches within the limits: :meth:`add` each, then :meth:`flush`.

    ``upload_of`` gives an item's :class:`Upload`; ``limits`` is asked again for every item, so
    limits tightened during a run apply from the next batch on. ``max_files`` caps a batch
    below the service's own limit (smaller batches: steadier progress, less work redone).
    Items that :func:`refusal` refuses must not be added.
    """

    def __init__(
        self,
        limits: Callable[[], Limits],
        upload_of: Callable[[T], Upload],
        *,
        max_files: int | None = None,
    ) -> None:
        self._limits = limits
        self._upload_of = upload_of
        self._max_files = max_files
        self._batch: list[T] = []
        self._bytes = BODY_OVERHEAD
        self._pixels = 0

    def add(self, item: T) -> list[list[T]]:
        """Add one item; return the batch it closed, if adding it would overflow the current."""
        limits = self._limits()
        upload = self._upload_of(item)
        most_files = min(limits.max_files, self._max_files or limits.max_files)
        pixels = upload.counted_pixels(limits)
        fits = (
            len(self._batch) < most_files
            and self._bytes + upload.part_bytes <= limits.max_bytes
            and self._pixels + pixels <= limits.max_request_pixels
        )
        closed = [] if fits or not self._batch else self.flush()
        self._batch.append(item)
        self._bytes += upload.part_bytes
        self._pixels += pixels
        return closed

    def flush(self) -> list[list[T]]:
        """The batch being filled, if it holds anything; the planner starts a new one."""
        batch, self._batch = self._batch, []
        self._bytes, self._pixels = BODY_OVERHEAD, 0
        return [batch] if batch else []


def plan_batches(
    items: Iterable[T],
    limits: Limits,
    upload_of: Callable[[T], Upload],
    *,
    max_files: int | None = None,
) -> Iterator[list[T]]:
    """``items`` cut into batches within ``limits`` (none may be one :func:`refusal` refuses)."""
    planner = BatchPlanner(lambda: limits, upload_of, max_files=max_files)
    for item in items:
        yield from planner.add(item)
    yield from planner.flush()


def resplit(
    batch: list[T], error: ApiError, limits: Limits, upload_of: Callable[[T], Upload]
) -> tuple[Limits, list[list[T]]] | None:
    """What to send instead of a batch refused whole: tighter limits and the batch cut again.

    A 413 for its size teaches the limit the service reports (:meth:`Limits.tightened`); a
    500 has no such lesson but is cut in halves, so the one image that makes the service fail
    is found and answered alone. None: a single item (its error is its own), or an error that
    no cut helps.
    """
    if len(batch) < 2 or not (error.code in SIZE_CODES or error.status == 500):
        return None
    tighter = limits.tightened(error) or limits
    parts = list(plan_batches(batch, tighter, upload_of))
    if len(parts) < 2:
        half = len(batch) // 2
        parts = [batch[:half], batch[half:]]
    return tighter, parts
