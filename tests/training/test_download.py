"""Downloading into the cache, against local HTTP servers standing in for the mirrors."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.training.synthetic import SyntheticDataset, idx_payload, write_gz
from training.data import (
    IMAGES_MAGIC,
    MnistDownloadError,
    ProgressBar,
    download,
    load_mnist,
)


def _cache_listing(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_download_fills_the_cache_then_reuses_it(
    synthetic: SyntheticDataset,
    no_mnist_env: Path,
    http_mirror: Callable[..., str],
    refused_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MNIST_MIRROR_URL", http_mirror(synthetic.directory))
    data = load_mnist(spec=synthetic.spec, progress=False)

    assert data.source == "download cache"
    np.testing.assert_array_equal(data.train_images, synthetic.data.train_images)
    np.testing.assert_array_equal(data.test_labels, synthetic.data.test_labels)
    # Exactly the four files, no temporary leftovers.
    assert _cache_listing(no_mnist_env) == sorted(f.name for f in synthetic.spec.files)

    # Second load: served from the cache, the mirror is not needed any more.
    monkeypatch.setenv("MNIST_MIRROR_URL", refused_url)
    again = load_mnist(spec=synthetic.spec, progress=False)
    np.testing.assert_array_equal(again.train_images, synthetic.data.train_images)


def test_falls_back_to_the_next_mirror(
    synthetic: SyntheticDataset,
    tmp_path: Path,
    http_mirror: Callable[..., str],
    refused_url: str,
) -> None:
    cache = tmp_path / "cache"
    expected = synthetic.spec.train_labels
    path = download(
        expected, cache, base_urls=[refused_url, http_mirror(synthetic.directory)], progress=False
    )
    assert path == cache / expected.name
    assert _cache_listing(cache) == [expected.name]


def test_corrupt_download_leaves_no_file(
    synthetic: SyntheticDataset, tmp_path: Path, http_mirror: Callable[..., str]
) -> None:
    # The mirror serves a well-formed file with the wrong content: the digest must refuse it.
    bad_mirror = tmp_path / "bad-mirror"
    images = synthetic.data.train_images.copy()
    images[3] = 255 - images[3]
    write_gz(bad_mirror / "train-images-idx3-ubyte.gz", idx_payload(images, IMAGES_MAGIC))
    cache = tmp_path / "cache"

    with pytest.raises(MnistDownloadError, match=r"train-images-idx3-ubyte\.gz.*wrong SHA-256"):
        download(
            synthetic.spec.train_images, cache, base_urls=[http_mirror(bad_mirror)], progress=False
        )
    assert _cache_listing(cache) == []


def test_truncated_transfer_leaves_no_file(
    synthetic: SyntheticDataset, tmp_path: Path, http_mirror: Callable[..., str]
) -> None:
    name = "train-images-idx3-ubyte.gz"
    url = http_mirror(synthetic.directory, truncate=(name,))
    cache = tmp_path / "cache"

    with pytest.raises(MnistDownloadError, match=name) as excinfo:
        download(synthetic.spec.train_images, cache, base_urls=[url], progress=False)
    message = str(excinfo.value)
    assert "transfer failed" in message
    assert "no network connection" not in message  # the mirror answered: not an offline case
    assert "--data-dir" in message
    assert _cache_listing(cache) == []


def test_missing_on_the_mirror_reports_http_status(
    synthetic: SyntheticDataset, tmp_path: Path, http_mirror: Callable[..., str]
) -> None:
    empty_mirror = tmp_path / "empty-mirror"
    empty_mirror.mkdir()
    with pytest.raises(MnistDownloadError, match="HTTP 404"):
        download(
            synthetic.spec.test_labels,
            tmp_path / "cache",
            base_urls=[http_mirror(empty_mirror)],
            progress=False,
        )


def test_offline_gives_one_clear_message(
    synthetic: SyntheticDataset,
    no_mnist_env: Path,
    refused_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MNIST_MIRROR_URL", refused_url)
    with pytest.raises(MnistDownloadError) as excinfo:
        load_mnist(spec=synthetic.spec, progress=False)

    message = str(excinfo.value)
    assert "no network connection" in message
    assert "--data-dir" in message
    assert "MNIST_DATA_DIR" in message
    assert _cache_listing(no_mnist_env) == []


def test_progress_bar_reaches_100_percent_on_stderr(
    synthetic: SyntheticDataset,
    tmp_path: Path,
    http_mirror: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    download(
        synthetic.spec.train_images,
        tmp_path / "cache",
        base_urls=[http_mirror(synthetic.directory)],
        progress=True,
    )
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "train-images-idx3-ubyte.gz" in captured.err
    assert "100%" in captured.err


def test_progress_bar_without_known_length() -> None:
    stream = io.StringIO()
    bar = ProgressBar("file.gz", None, stream=stream)
    bar.close(3 * 2**20)
    assert stream.getvalue() == "\rfile.gz 3.0 MiB\n"
