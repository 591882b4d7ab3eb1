"""Fixtures for the training tests: the real MNIST (when present), tiny synthetic IDX datasets,
and a local HTTP server standing in for the download mirrors (there is no internet here).
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.mnist import MISSING
from harness.mnist import mnist_dir as find_mnist_dir
from tests.training.synthetic import SyntheticDataset, make_dataset
from training.data import MnistData, load_mnist


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST directory; skips when there is none on this machine."""
    directory = find_mnist_dir()
    if directory is None:
        pytest.skip(MISSING)
    return directory


@pytest.fixture(scope="session")
def mnist(mnist_dir: Path) -> MnistData:
    """The real, verified MNIST arrays (loaded once per session)."""
    return load_mnist(mnist_dir, progress=False)


@pytest.fixture
def synthetic(tmp_path: Path) -> SyntheticDataset:
    """A tiny valid MNIST-shaped dataset on disk, with its own DatasetSpec (digests included)."""
    return make_dataset(tmp_path / "idx")


@pytest.fixture
def no_mnist_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No local data dir, a private empty cache, no mirror override; returns the cache dir."""
    cache = tmp_path / "cache"
    monkeypatch.delenv("MNIST_DATA_DIR", raising=False)
    monkeypatch.delenv("MNIST_MIRROR_URL", raising=False)
    monkeypatch.setenv("MNIST_CACHE_DIR", str(cache))
    return cache


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves files; for names in ``truncate`` it promises the full length but sends half."""

    truncate: frozenset[str] = frozenset()

    def do_GET(self) -> None:
        name = self.path.rsplit("/", 1)[-1]
        path = Path(self.directory) / name
        if name in self.truncate and path.is_file():
            body = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""


@pytest.fixture
def http_mirror() -> Iterator[Callable[..., str]]:
    """Start local mirrors: ``http_mirror(directory, truncate=())`` returns a base URL."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(directory: Path, *, truncate: tuple[str, ...] = ()) -> str:
        handler = type("Handler", (_Handler,), {"truncate": frozenset(truncate)})
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(directory))
        )
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def refused_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connecting is refused, like being offline."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"
