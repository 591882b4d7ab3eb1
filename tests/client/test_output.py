"""The results file: the ``review_id`` column, and files written before it resumed as they are."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from digits_client.output import COLUMNS, COLUMNS_BEFORE_REVIEWS, Row, RowWriter
from digits_client.sources import UsageError

QUEUED = Row(
    "a",
    "a.png",
    digits="75011",
    confidence=0.4,
    needs_review=True,
    reasons=["low_confidence"],
    model_version=2,
    review_id="AAAAAAAAAAAAAAAAAAAAAA",
)
PLAIN = Row("b", "b.png", digits="12345", confidence=0.99, needs_review=False, model_version=2)


def test_a_queued_reading_has_its_review_id(tmp_path: Path) -> None:
    for name in ("out.csv", "out.jsonl"):
        writer = RowWriter(tmp_path / name)
        writer.write(QUEUED)
        writer.write(PLAIN)
        writer.close()
    with (tmp_path / "out.csv").open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert tuple(table[0]) == COLUMNS
    assert [row["review_id"] for row in table] == ["AAAAAAAAAAAAAAAAAAAAAA", ""]
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["review_id"] for line in lines] == ["AAAAAAAAAAAAAAAAAAAAAA", None]


def test_a_file_written_before_review_ids_is_resumed_in_its_own_columns(tmp_path: Path) -> None:
    out = tmp_path / "old.csv"
    out.write_text(",".join(COLUMNS_BEFORE_REVIEWS) + "\nb,b.png,12345,0.99,false,,2,,\n")
    writer = RowWriter(out, resume=True)
    assert writer.done == {"b"}
    writer.write(QUEUED)
    writer.close()
    with out.open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert tuple(table[0]) == COLUMNS_BEFORE_REVIEWS
    assert [row["id"] for row in table] == ["b", "a"]
    assert table[1]["error"] == "", "every cell under its own header"
    assert table[1]["model_version"] == "2"


def test_a_file_of_other_columns_is_not_resumed(tmp_path: Path) -> None:
    out = tmp_path / "other.csv"
    out.write_text("id,path,answer\nb,b.png,1\n")
    with pytest.raises(UsageError, match="not a results file of this version"):
        RowWriter(out, resume=True)
