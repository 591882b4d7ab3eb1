"""The models directory (app.serving.model_dir): version names, content fingerprints, reasons.

What the store sees of the directory, tested on real directories without any model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.serving import model_dir
from app.serving.model_dir import (
    NotRegularFileError,
    content_fingerprint,
    non_regular_files,
    read_regular_file,
    scan_versions,
    scrub_paths,
    versions_on_disk,
)
from app.serving.policy import MAX_VERSION

# --- version names ---------------------------------------------------------------------------


def test_version_names_are_ascii_digits_and_bounded(tmp_path: Path) -> None:
    names = ["1", "10", "²", "٣", "1" * 17, str(MAX_VERSION), str(MAX_VERSION + 1), "latest"]
    for name in [*names, ".tmp-4"]:
        (tmp_path / name).mkdir()
    (tmp_path / "5").write_text("a file, not a directory")
    versions, ignored = scan_versions(tmp_path)
    assert versions == [1, 10, MAX_VERSION]
    reasons = {entry.name: entry.reason for entry in ignored}
    assert set(reasons) == {"\\xb2", "\\u0663", "1" * 17, str(MAX_VERSION + 1), "latest"}
    assert "ASCII digits" in reasons["\\xb2"]
    assert "2^53" in reasons[str(MAX_VERSION + 1)]
    assert versions_on_disk(tmp_path) == [MAX_VERSION, 10, 1]


def test_versions_on_disk_ignores_hidden_and_non_integer_names(tmp_path: Path) -> None:
    for name in ("1", "10", "2", ".tmp-3", "latest", "4.bak"):
        (tmp_path / name).mkdir()
    (tmp_path / "5").write_text("a file, not a directory")
    assert versions_on_disk(tmp_path) == [10, 2, 1]
    assert versions_on_disk(tmp_path / "missing") == []


# --- content fingerprints --------------------------------------------------------------------


def version_dir(root: Path) -> Path:
    path = root / "3"
    (path / "variables").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"graph")
    (path / "variables" / "variables.index").write_bytes(b"index")
    return path


def test_a_fingerprint_stays_while_nothing_changes(tmp_path: Path) -> None:
    path = version_dir(tmp_path)
    assert content_fingerprint(path) == content_fingerprint(path)
    # Only the content counts, not where the directory is.
    moved = tmp_path / "elsewhere"
    path.rename(moved)
    first = content_fingerprint(moved)
    moved.rename(path)
    assert content_fingerprint(path) == first


@pytest.mark.parametrize("change", ["size", "mtime", "new file", "new directory", "removed"])
def test_any_change_inside_changes_the_fingerprint(tmp_path: Path, change: str) -> None:
    path = version_dir(tmp_path)
    before = content_fingerprint(path)
    index = path / "variables" / "variables.index"
    if change == "size":
        index.write_bytes(b"index, longer")
    elif change == "mtime":
        stat = index.stat()
        os.utime(index, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    elif change == "new file":
        (path / "variables" / "variables.data-00000-of-00001").write_bytes(b"")
    elif change == "new directory":
        (path / "assets").mkdir()
    else:
        index.unlink()
    assert content_fingerprint(path) != before


def test_a_fingerprint_walks_a_bounded_number_of_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_dir, "FINGERPRINT_MAX_FILES", 5)
    path = tmp_path / "3"
    path.mkdir()
    for index in range(10):
        (path / f"{index:02d}").write_bytes(b"x")
    bounded = content_fingerprint(path)
    assert content_fingerprint(path) == bounded
    (path / "09").write_bytes(b"beyond the bound: not seen")
    assert content_fingerprint(path) == bounded
    (path / "00").write_bytes(b"within the bound: seen")
    assert content_fingerprint(path) != bounded


def test_a_fingerprint_walks_a_bounded_depth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_dir, "FINGERPRINT_MAX_DEPTH", 1)
    deep = tmp_path / "3" / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "f").write_bytes(b"x")
    before = content_fingerprint(tmp_path / "3")
    (deep / "f").write_bytes(b"deeper than the bound")
    assert content_fingerprint(tmp_path / "3") == before


# --- reasons without absolute paths ----------------------------------------------------------


def test_scrub_paths_keeps_only_relative_names(tmp_path: Path) -> None:
    version_dir = tmp_path / "models" / "7"
    text = (
        f"cannot open {version_dir}/variables/variables.index; also /usr/lib/x.so "
        "and shape [None, 28, 28] (N, 10) 1/2"
    )
    scrubbed = scrub_paths(text, version_dir)
    assert "/usr" not in scrubbed
    assert str(tmp_path) not in scrubbed
    assert "7/variables/variables.index" in scrubbed
    assert "x.so" in scrubbed
    assert "[None, 28, 28] (N, 10) 1/2" in scrubbed


# --- only regular files are read ----------------------------------------------------------


def test_read_regular_file_reads_a_bounded_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    path.write_bytes(b"x" * 100)
    assert read_regular_file(path, 100) == b"x" * 100
    link = tmp_path / "link"
    link.symlink_to(path)
    assert read_regular_file(link, 100) == b"x" * 100, "a symlink to a regular file is fine"
    with pytest.raises(NotRegularFileError, match="larger than 99 bytes"):
        read_regular_file(path, 99)
    with pytest.raises(FileNotFoundError):
        read_regular_file(tmp_path / "missing", 100)


def test_read_regular_file_refuses_a_fifo_and_a_device_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # nobody writes to it: opening it for reading in blocking mode would hang
    with pytest.raises(NotRegularFileError, match="a FIFO, not a regular file"):
        read_regular_file(fifo, 100)
    zero = tmp_path / "zero"
    zero.symlink_to("/dev/zero")  # endless
    with pytest.raises(NotRegularFileError, match="a character device, not a regular file"):
        read_regular_file(zero, 100)
    with pytest.raises(NotRegularFileError, match="a directory, not a regular file"):
        read_regular_file(tmp_path, 100)


def test_non_regular_files_names_fifos_and_devices_in_a_version(tmp_path: Path) -> None:
    path = version_dir(tmp_path)
    assert non_regular_files(path) == []
    os.mkfifo(path / "metrics.json")
    (path / "variables" / "variables.data-00000-of-00001").symlink_to("/dev/zero")
    (path / "assets").symlink_to(path / "variables")  # a symlinked directory is walked
    found = non_regular_files(path)
    assert "metrics.json (a FIFO)" in found
    assert "variables/variables.data-00000-of-00001 (a character device)" in found
    assert "assets/variables.data-00000-of-00001 (a character device)" in found
    assert len(found) == 3
