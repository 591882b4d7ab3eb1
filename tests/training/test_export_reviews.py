"""The export of reviewed items: the layout of the real-digit sets, cut digits, what is left out,
and a folder that appears whole or not at all."""

from __future__ import annotations

import csv
import io
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from app.reviews.db import default_url, open_database, upgrade
from app.reviews.queue import NewItem, ReviewQueue, Submission
from app.reviews.tables import Kind, Verdict
from harness import postgres
from tests.conftest import postgres_server
from tests.training.synthetic import blob_digits, scan_png
from training.export_reviews import main, write_export
from training.extra_data import is_held_out, load_extra_set


@dataclass(frozen=True)
class Reviewed:
    """A reviewed item as the queue gives it (the fields the export reads)."""

    review_id: str
    label: str | None
    image: bytes | None
    endpoint: str = "/recognize"
    verdict: str | None = "digits"
    reading: dict[str, Any] = field(default_factory=dict)


def _sheet(images: np.ndarray, fmt: str = "PNG", exif_rotate: bool = False) -> tuple[bytes, list]:
    """Digits side by side (dark on paper) and the reading's segments with their boxes."""
    sheet = Image.new("L", (20 + 60 * len(images), 80), 255)
    segments = []
    for i, image in enumerate(images):
        sheet.paste(Image.fromarray(255 - image).resize((56, 56)), (10 + 60 * i, 12))
        box = {"x": 10 + 60 * i, "y": 12, "width": 56, "height": 56}
        segments.append({"digit": 0, "confidence": 0.5, "box": box})
    buffer = io.BytesIO()
    if exif_rotate:
        # Stored turned on its side, with the EXIF orientation that turns it back upright.
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90° clockwise to view
        sheet.transpose(Image.Transpose.ROTATE_90).save(buffer, format=fmt, exif=exif)
    else:
        sheet.save(buffer, format=fmt)
    return buffer.getvalue(), segments


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_export_writes_strings_boxes_and_cut_digits(tmp_path: Path) -> None:
    images, _ = blob_digits(6, seed=21)
    three, segments3 = _sheet(images[:3])
    two, segments2 = _sheet(images[3:5])
    items = [
        Reviewed("aaa", "123", three, reading={"digits": "128", "segments": segments3}),
        # The reviewer keyed three digits where the service saw two: no box per digit.
        Reviewed("bbb", "456", two, reading={"digits": "46", "segments": segments2}),
        Reviewed("ccc", "7", scan_png(images[5]), endpoint="/predict", reading={"digits": "1"}),
        Reviewed("ddd", None, three, verdict="unreadable"),
        Reviewed("eee", None, three, verdict="not_digits"),
    ]
    out = tmp_path / "export"
    summary = write_export(items, out)

    assert _rows(out / "strings" / "labels.csv") == [
        {"filename": "aaa.png", "label": "123"},
        {"filename": "bbb.png", "label": "456"},
        {"filename": "ccc.png", "label": "7"},
    ]
    boxes = json.loads((out / "strings" / "boxes.json").read_text())
    assert boxes == {"aaa.png": [[10, 12, 56, 56], [70, 12, 56, 56], [130, 12, 56, 56]]}
    assert _rows(out / "digits" / "labels.csv") == [
        {"filename": "aaa-0.png", "label": "1", "source": "aaa.png"},
        {"filename": "aaa-1.png", "label": "2", "source": "aaa.png"},
        {"filename": "aaa-2.png", "label": "3", "source": "aaa.png"},
        {"filename": "ccc-0.png", "label": "7", "source": "ccc.png"},
    ]
    # A cut digit is exactly the box's region of the image.
    sheet = np.asarray(Image.open(io.BytesIO(three)))
    np.testing.assert_array_equal(
        np.asarray(Image.open(out / "digits" / "aaa-1.png")), sheet[12:68, 70:126]
    )
    # A /predict upload is the digit whole.
    np.testing.assert_array_equal(
        np.asarray(Image.open(out / "digits" / "ccc-0.png")),
        np.asarray(Image.open(io.BytesIO(scan_png(images[5])))),
    )
    assert summary.strings == 3
    assert summary.strings_with_boxes == 1
    assert summary.digits == 4
    assert summary.left_out == {
        "unreadable": 1,
        "not_digits": 1,
        "digits without a box each (image in strings/ only)": 1,
    }
    written = json.loads((out / "export.json").read_text())
    assert written["digits"] == 4
    assert written["left_out"]["unreadable"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"], "no temporary folder left"


def test_boxes_are_in_the_upright_images_pixels(tmp_path: Path) -> None:
    images, _ = blob_digits(2, seed=22)
    stored, segments = _sheet(images, fmt="JPEG", exif_rotate=True)
    assert Image.open(io.BytesIO(stored)).size == (80, 140), "stored on its side"
    write_export([Reviewed("rot", "12", stored, reading={"segments": segments})], tmp_path / "x")
    upright = Image.open(tmp_path / "x" / "strings" / "rot.png")
    assert upright.size == (140, 80)
    cut = np.asarray(Image.open(tmp_path / "x" / "digits" / "rot-1.png"), dtype=np.int16)
    assert cut.shape == (56, 56)
    # The second digit's ink, not paper: a JPEG, so compared loosely.
    expected = 255 - np.asarray(Image.fromarray(images[1]).resize((56, 56)), dtype=np.int16)
    assert np.abs(cut - expected).mean() < 12


def test_export_and_training_agree_on_the_held_out_side(tmp_path: Path) -> None:
    images, _ = blob_digits(60, seed=23)
    items = []
    for i in range(20):
        data, segments = _sheet(images[3 * i : 3 * i + 3])
        items.append(Reviewed(f"r{i:03d}", f"{i % 10}{(i + 1) % 10}{(i + 2) % 10}", data,
                              reading={"segments": segments}))  # fmt: skip
    write_export(items, tmp_path / "export")
    digits = load_extra_set(tmp_path / "export" / "digits")
    strings = load_extra_set(tmp_path / "export" / "strings")
    np.testing.assert_array_equal(digits.labels, strings.labels)
    np.testing.assert_array_equal(digits.held_out, strings.held_out)
    np.testing.assert_array_equal(digits.images, strings.images)
    sides = {f"r{i:03d}.png": is_held_out(f"r{i:03d}.png") for i in range(20)}
    assert list(strings.held_out) == [sides[n.split("#")[0]] for n in strings.names]
    assert any(sides.values())
    assert not all(sides.values())


def test_an_existing_export_is_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / "old.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="choose a new --out"):
        write_export([], out)
    assert (out / "old.txt").read_text() == "keep"
    empty = tmp_path / "empty"
    empty.mkdir()
    summary = write_export([], empty)
    assert summary.strings == 0
    assert _rows(empty / "digits" / "labels.csv") == []


def test_a_failed_export_leaves_nothing(tmp_path: Path) -> None:
    def items() -> Any:
        yield Reviewed("aaa", "1", scan_png(blob_digits(1)[0][0]))
        raise RuntimeError("the database went away")

    with pytest.raises(RuntimeError, match="went away"):
        write_export(items(), tmp_path / "export")
    assert list(tmp_path.iterdir()) == []


def test_an_image_that_does_not_decode_is_counted(tmp_path: Path) -> None:
    summary = write_export([Reviewed("bad", "12", b"\x89PNG\r\n\x1a\nbroken")], tmp_path / "x")
    assert summary.strings == 0
    assert summary.left_out == {"image not decoded (truncated_image)": 1}


# --- from a real queue -----------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty review queue on each database (PostgreSQL skipped without one)."""
    if request.param == "sqlite":
        url = default_url(tmp_path / "data")
        _migrate(url)
        yield url
        return
    with postgres.fresh_database(postgres_server(), prefix="htrain_export") as url:
        _migrate(url)
        yield url


def _migrate(url: str) -> None:
    database = open_database(url)
    upgrade(database)
    database.dispose()


def _key(queue: ReviewQueue, submission: Submission) -> None:
    claimed = queue.claim("alice", 300)
    assert claimed is not None
    submission = Submission(
        reviewer="alice",
        lease=claimed.lease,
        digits=submission.digits,
        corrections=submission.corrections,
        verdict=submission.verdict,
    )
    queue.submit(claimed.item.review_id, submission)


def test_the_command_exports_what_reviewers_keyed(
    queue_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, _ = blob_digits(5, seed=24)
    sheet, segments = _sheet(images[:3])
    database = open_database(queue_url)
    queue = ReviewQueue(database)
    read = {"digits": "128", "confidence": 0.4, "segments": segments, "review_reasons": []}
    for digits, reading in (("128", read), ("9", {"digits": "9", "segments": []}), ("1", read)):
        queue.enqueue(
            NewItem(kind=Kind.FLAGGED, endpoint="/recognize", model_version=2, image=sheet,
                    image_type="image/png", reading=reading, reading_digits=digits)
        )  # fmt: skip
    _key(queue, Submission(reviewer="alice", corrections=[(2, 3)]))  # 128 -> 123
    _key(queue, Submission(reviewer="alice", verdict=Verdict.NOT_DIGITS))
    database.dispose()  # the third is never keyed: not exported

    out = tmp_path / "export"
    assert main(["--database", queue_url, "--out", str(out)]) == 0
    [row] = _rows(out / "strings" / "labels.csv")
    assert row["label"] == "123"
    digits = _rows(out / "digits" / "labels.csv")
    assert [d["label"] for d in digits] == ["1", "2", "3"]
    assert {d["source"] for d in digits} == {row["filename"]}
    said = capsys.readouterr().out
    assert "exported 1 keyed images" in said
    assert "not_digits 1" in said


def test_the_command_says_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "export")
    assert main(["--database", f"sqlite:///{tmp_path}/nope.sqlite3", "--out", out]) == 2
    assert "no such SQLite file" in capsys.readouterr().err
    assert not (tmp_path / "nope.sqlite3").exists(), "a mistyped path creates nothing"
    empty = default_url(tmp_path / "empty")
    open_database(empty).engine.connect().close()
    assert main(["--database", empty, "--out", out]) == 2
    assert "holds no review queue (never migrated)" in capsys.readouterr().err
    assert main(["--database", "mysql://h/db", "--out", out]) == 2
    assert "SQLite or PostgreSQL" in capsys.readouterr().err
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = f"postgresql+psycopg://alice:s3cret@127.0.0.1:{port}/reviews"
    assert main(["--database", down, "--out", out]) == 2
    said = capsys.readouterr().err
    assert "is not answering" in said
    assert "s3cret" not in said
    assert not (tmp_path / "export").exists()


def test_python_m_training_dispatches_export_reviews() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "training", "export-reviews", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "python -m training export-reviews" in done.stdout
    assert "--database" in done.stdout
