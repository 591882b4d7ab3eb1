"""MNIST as verified numpy arrays: from a local directory, or downloaded once into a cache.

Where the four IDX ``.gz`` files come from, in order of precedence:

1. an explicit directory (the CLI's ``--data-dir``),
2. the ``MNIST_DATA_DIR`` environment variable,
3. a download cache: ``MNIST_CACHE_DIR`` (default ``~/.cache/mnist-digits``), filled from a public
   mirror (``MNIST_MIRROR_URL`` overrides the built-in mirrors, e.g. for a local test server).

Every file is checked the same way wherever it comes from: gzip stream complete, IDX magic number,
dimensions, payload length and the SHA-256 of the decompressed payload. The digests are the
official payloads' (the gzip wrapping may differ byte for byte between mirrors, the payload must
not). A file that fails any check raises :class:`MnistFileError` naming the file and the problem;
the dataset is never silently wrong.

Downloads are atomic: bytes go to a temporary file in the cache directory, are verified, then
``os.replace``-d into place, so the cache never holds a half file under the real name.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import numpy as np
import numpy.typing as npt

DATA_DIR_ENV: Final = "MNIST_DATA_DIR"
CACHE_DIR_ENV: Final = "MNIST_CACHE_DIR"
MIRROR_ENV: Final = "MNIST_MIRROR_URL"
DEFAULT_CACHE_DIR: Final = Path("~/.cache/mnist-digits")
# The original site (yann.lecun.com) now refuses anonymous downloads; these two mirrors serve the
# original files and are the ones torchvision and TensorFlow Datasets use.
DEFAULT_MIRRORS: Final = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)
DOWNLOAD_TIMEOUT_SECONDS: Final = 30.0
_CHUNK_BYTES: Final = 1 << 16

IMAGES_MAGIC: Final = 2051  # IDX: unsigned byte data, 3 dimensions
LABELS_MAGIC: Final = 2049  # IDX: unsigned byte data, 1 dimension

OFFLINE_HINT: Final = (
    f"Pass a directory holding the four MNIST .gz files with --data-dir DIR, "
    f"or set {DATA_DIR_ENV}=DIR."
)


class MnistError(Exception):
    """Base class: MNIST could not be provided. The message says what to do."""


class MnistFileError(MnistError):
    """A file is missing, corrupt, or not the expected MNIST file. The message names it."""


class MnistDownloadError(MnistError):
    """No mirror delivered a verified file (for example: offline). The message says what to do."""


@dataclass(frozen=True)
class IdxFile:
    """What one IDX file must be: its name, magic number, dimensions and payload digest."""

    name: str
    magic: int
    shape: tuple[int, ...]
    sha256: str

    @property
    def header_bytes(self) -> int:
        """Length of the IDX header: the magic number then one 32-bit size per dimension."""
        return 4 + 4 * len(self.shape)

    @property
    def payload_bytes(self) -> int:
        """Length of the whole decompressed file: header plus one byte per element."""
        return self.header_bytes + int(np.prod(self.shape))


@dataclass(frozen=True)
class DatasetSpec:
    """The four files of an MNIST-shaped dataset. Tests inject tiny synthetic specs."""

    train_images: IdxFile
    train_labels: IdxFile
    test_images: IdxFile
    test_labels: IdxFile

    @property
    def files(self) -> tuple[IdxFile, IdxFile, IdxFile, IdxFile]:
        """The four files, in the order train images, train labels, test images, test labels."""
        return (self.train_images, self.train_labels, self.test_images, self.test_labels)


# Digests of the decompressed payloads, from ../shared/data/mnist/SHA256SUMS.uncompressed.
MNIST: Final = DatasetSpec(
    train_images=IdxFile(
        "train-images-idx3-ubyte.gz",
        IMAGES_MAGIC,
        (60_000, 28, 28),
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    train_labels=IdxFile(
        "train-labels-idx1-ubyte.gz",
        LABELS_MAGIC,
        (60_000,),
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    test_images=IdxFile(
        "t10k-images-idx3-ubyte.gz",
        IMAGES_MAGIC,
        (10_000, 28, 28),
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    test_labels=IdxFile(
        "t10k-labels-idx1-ubyte.gz",
        LABELS_MAGIC,
        (10_000,),
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
)


@dataclass(frozen=True)
class MnistData:
    """The verified dataset: uint8 images [N, 28, 28] (white ink on black) and uint8 labels [N]."""

    train_images: npt.NDArray[np.uint8]
    train_labels: npt.NDArray[np.uint8]
    test_images: npt.NDArray[np.uint8]
    test_labels: npt.NDArray[np.uint8]
    source: str
    """Where the files were read: ``"directory"`` or ``"download cache"``."""
    digests: dict[str, str]
    """File name -> verified SHA-256 of its decompressed payload."""


# -- locating the files -------------------------------------------------------------------------


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The local MNIST directory: ``data_dir`` if given, else ``$MNIST_DATA_DIR``, else None.

    None means "no local copy: use the download cache".
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    from_env = os.environ.get(DATA_DIR_ENV, "")
    return Path(from_env).expanduser() if from_env else None


def cache_dir() -> Path:
    """The download cache directory: ``$MNIST_CACHE_DIR`` or ``~/.cache/mnist-digits``."""
    return Path(os.environ.get(CACHE_DIR_ENV, "") or DEFAULT_CACHE_DIR).expanduser()


def mirrors() -> tuple[str, ...]:
    """Base URLs to download from: ``$MNIST_MIRROR_URL`` alone if set, else the public mirrors."""
    override = os.environ.get(MIRROR_ENV, "")
    return (override,) if override else DEFAULT_MIRRORS


def load_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    spec: DatasetSpec = MNIST,
    progress: bool = True,
) -> MnistData:
    """Load and verify MNIST from ``data_dir`` / ``$MNIST_DATA_DIR``, or from the download cache.

    Raises :class:`MnistFileError` for a missing or bad local file (naming it), and
    :class:`MnistDownloadError` when the cache must be filled and no mirror can deliver.
    """
    local = resolve_data_dir(data_dir)
    if local is not None:
        if not local.is_dir():
            raise MnistFileError(f"MNIST directory {local} does not exist (or is not a directory)")
        arrays = [read_idx(local / f.name, f) for f in spec.files]
        source = "directory"
    else:
        arrays = [_cached_or_downloaded(f, progress=progress) for f in spec.files]
        source = "download cache"
    return MnistData(
        train_images=arrays[0],
        train_labels=arrays[1],
        test_images=arrays[2],
        test_labels=arrays[3],
        source=source,
        digests={f.name: f.sha256 for f in spec.files},
    )


# -- reading and verifying one file -------------------------------------------------------------


def read_idx(path: Path, expected: IdxFile) -> npt.NDArray[np.uint8]:
    """Read one gzip-compressed IDX file and verify it against ``expected``.

    Returns the uint8 array of shape ``expected.shape``. Raises :class:`MnistFileError` naming the
    file and what is wrong: missing, not gzip, truncated or corrupt stream, wrong magic number,
    wrong dimensions, wrong payload length, wrong SHA-256.
    """
    if not path.is_file():
        raise MnistFileError(f"{path}: file not found (expected {expected.name})")
    try:
        with gzip.open(path, "rb") as stream:
            payload = stream.read()
    except gzip.BadGzipFile as exc:
        raise MnistFileError(f"{path}: not a gzip file or corrupt gzip data ({exc})") from exc
    except EOFError as exc:
        raise MnistFileError(f"{path}: truncated gzip stream ({exc})") from exc
    except (zlib.error, OSError) as exc:
        raise MnistFileError(f"{path}: corrupt gzip data ({exc})") from exc
    return parse_idx(payload, expected, origin=str(path))


def parse_idx(payload: bytes, expected: IdxFile, *, origin: str) -> npt.NDArray[np.uint8]:
    """Verify a decompressed IDX payload against ``expected`` and return its array.

    The structural checks come first so that a wrong file gets a specific message; the digest
    comes last and catches anything else (a flipped pixel, a different labelling).
    """
    if len(payload) < expected.header_bytes:
        raise MnistFileError(
            f"{origin}: truncated: {len(payload)} bytes, shorter than the "
            f"{expected.header_bytes}-byte IDX header"
        )
    header = np.frombuffer(payload, dtype=">u4", count=1 + len(expected.shape))
    magic, dims = int(header[0]), tuple(int(d) for d in header[1:])
    if magic != expected.magic:
        raise MnistFileError(
            f"{origin}: bad magic number {magic} (expected {expected.magic}: "
            f"{'images' if expected.magic == IMAGES_MAGIC else 'labels'}); wrong file?"
        )
    if dims != expected.shape:
        raise MnistFileError(
            f"{origin}: wrong count/shape {dims} in header (expected {expected.shape})"
        )
    if len(payload) < expected.payload_bytes:
        raise MnistFileError(
            f"{origin}: truncated: {len(payload)} bytes, expected {expected.payload_bytes}"
        )
    if len(payload) > expected.payload_bytes:
        raise MnistFileError(
            f"{origin}: {len(payload) - expected.payload_bytes} unexpected bytes after the data "
            f"(expected {expected.payload_bytes} bytes)"
        )
    digest = hashlib.sha256(payload).hexdigest()
    if digest != expected.sha256:
        raise MnistFileError(
            f"{origin}: wrong SHA-256 of the decompressed data: {digest}, expected "
            f"{expected.sha256}; the file is corrupt or not the official MNIST file"
        )
    data = np.frombuffer(payload, dtype=np.uint8, offset=expected.header_bytes)
    # Copy so the array owns writable memory instead of pinning the immutable bytes object.
    return data.reshape(expected.shape).copy()


# -- the download cache -------------------------------------------------------------------------


def _cached_or_downloaded(expected: IdxFile, *, progress: bool) -> npt.NDArray[np.uint8]:
    """The file from the cache if it verifies, otherwise a fresh verified download."""
    directory = cache_dir()
    cached = directory / expected.name
    if cached.is_file():
        try:
            return read_idx(cached, expected)
        except MnistFileError as exc:
            # Only something outside this module can damage a cached file (downloads are
            # atomic); replacing it is safe because the new copy is verified again.
            print(f"warning: {exc}; downloading it again", file=sys.stderr)
    download(expected, directory, progress=progress)
    return read_idx(cached, expected)


def download(
    expected: IdxFile,
    directory: Path,
    *,
    base_urls: Sequence[str] | None = None,
    progress: bool = True,
) -> Path:
    """Download ``expected`` into ``directory``, verified and atomically; return its path.

    Mirrors are tried in order (default: :func:`mirrors`). Each attempt streams into a temporary
    file in ``directory`` (same file system, so the final ``os.replace`` is atomic), verifies it
    with :func:`read_idx`, and only then gives it its real name. A failed attempt deletes its
    temporary file. Raises :class:`MnistDownloadError` when every mirror fails.
    """
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / expected.name
    failures: list[str] = []
    # "Offline" only when no mirror could even be connected to; a mirror that answered badly
    # (HTTP error, cut transfer, wrong content) gets its own reason instead.
    unreachable = True
    for base in base_urls if base_urls is not None else mirrors():
        url = base if base.endswith("/") else base + "/"
        url += expected.name
        fd, tmp_name = tempfile.mkstemp(prefix=f".{expected.name}.", suffix=".part", dir=directory)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as sink:
                _fetch(url, sink, label=expected.name, progress=progress)
            read_idx(tmp, expected)
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; a cache file is ordinary data
            os.replace(tmp, target)
            return target
        except MnistFileError as exc:
            unreachable = False
            failures.append(f"{url}: {str(exc).removeprefix(str(tmp) + ': ')}")
        except urllib.error.HTTPError as exc:
            unreachable = False
            failures.append(f"{url}: HTTP {exc.code} {exc.reason}")
        except urllib.error.URLError as exc:  # DNS failure, connection refused, no route
            failures.append(f"{url}: {exc.reason}")
        except (OSError, http.client.HTTPException) as exc:  # failed after connecting
            unreachable = False
            failures.append(f"{url}: transfer failed: {exc or type(exc).__name__}")
        finally:
            tmp.unlink(missing_ok=True)
    tried = "\n  ".join(failures) if failures else "(no mirror configured)"
    headline = (
        "Cannot download MNIST: no network connection to any mirror."
        if unreachable
        else f"Cannot download MNIST file {expected.name}: no mirror delivered a verified copy."
    )
    raise MnistDownloadError(f"{headline}\n  {tried}\n{OFFLINE_HINT}")


def _fetch(url: str, sink: IO[bytes], *, label: str, progress: bool) -> None:
    """Stream ``url`` into ``sink``, drawing a progress bar on stderr when asked."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        bar = ProgressBar(label, total, enabled=progress)
        received = 0
        while chunk := response.read(_CHUNK_BYTES):
            sink.write(chunk)
            received += len(chunk)
            bar.update(received)
        bar.close(received)
        if total is not None and received != total:
            # urllib does not always raise when the peer closes early; the digest check would
            # catch it too, but this message is more precise.
            raise ConnectionError(f"connection closed after {received} of {total} bytes")


class ProgressBar:
    """A one-line download progress bar on stderr, redrawn at most ten times a second."""

    WIDTH: Final = 30

    def __init__(
        self, label: str, total: int | None, *, enabled: bool = True, stream: IO[str] | None = None
    ) -> None:
        self._label = label
        self._total = total
        self._enabled = enabled
        self._stream = stream
        self._last_draw = 0.0

    def update(self, received: int) -> None:
        """Redraw with ``received`` bytes so far (throttled)."""
        now = time.monotonic()
        if self._enabled and now - self._last_draw >= 0.1:
            self._last_draw = now
            self._draw(received, end="")

    def close(self, received: int) -> None:
        """Draw the final state and end the line."""
        if self._enabled:
            self._draw(received, end="\n")

    def _draw(self, received: int, *, end: str) -> None:
        stream = self._stream or sys.stderr
        # KiB for the small label files, MiB for the images.
        unit, size = ("MiB", 2**20) if max(received, self._total or 0) >= 2**20 else ("KiB", 2**10)
        if self._total:
            fraction = min(received / self._total, 1.0)
            filled = int(fraction * self.WIDTH)
            bar = "#" * filled + "." * (self.WIDTH - filled)
            amount = f"{received / size:.1f}/{self._total / size:.1f} {unit}"
            text = f"{self._label} [{bar}] {fraction:4.0%} {amount}"
        else:
            text = f"{self._label} {received / size:.1f} {unit}"
        stream.write("\r" + text + end)
        stream.flush()
