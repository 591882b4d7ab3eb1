"""What ``digits read`` reads (paths, folders, globs, manifests, shards) and how it writes and
resumes its results file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from digits_client.output import COLUMNS, Row, RowWriter, read_rows, row_line
from digits_client.sources import (
    Item,
    UsageError,
    collect,
    in_shard,
    parse_shard,
    shard_of,
)


def touch(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return str(path)


def test_folders_are_searched_recursively_by_extension(tmp_path: Path) -> None:
    a = touch(tmp_path / "b" / "a.PNG")
    b = touch(tmp_path / "a.jpg")
    touch(tmp_path / "notes.txt")
    touch(tmp_path / ".hidden.png")
    c = touch(tmp_path / "c" / "d" / "e.webp")
    assert [item.path for item in collect([str(tmp_path)])] == sorted([a, b, c])
    assert [item.path for item in collect([str(tmp_path)], ["txt"])] == [
        str(tmp_path / "notes.txt")
    ]


def test_files_and_globs_are_read_once_each(tmp_path: Path) -> None:
    a = touch(tmp_path / "x" / "a.png")
    b = touch(tmp_path / "x" / "b.png")
    found = collect([a, str(tmp_path / "x" / "*.png"), str(tmp_path / "**" / "b.png")])
    assert found == [Item(a, a), Item(b, b)]


def test_manifests_list_paths_and_ids(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("path,id,other\nimgs/1.png,first,x\n/abs/2.png,,y\n")
    (tmp_path / "m.jsonl").write_text('{"path": "3.png", "id": 3}\n\n{"path": "4.png"}\n')
    items = collect([str(tmp_path / "m.csv"), str(tmp_path / "m.jsonl")])
    assert items == [
        Item("first", str(tmp_path / "imgs" / "1.png")),
        Item("/abs/2.png", "/abs/2.png"),
        Item("3", str(tmp_path / "3.png")),
        Item(str(tmp_path / "4.png"), str(tmp_path / "4.png")),
    ]


@pytest.mark.parametrize(
    ("name", "text", "complaint"),
    [
        ("m.csv", "file,id\na.png,1\n", "'path' column"),
        ("m.csv", "path,id\n,1\n", "m.csv:2: no path"),
        ("m.jsonl", '{"path": "a.png"}\n{"id": 1}\n', "m.jsonl:2: no path"),
        ("m.jsonl", "not json\n", "m.jsonl:1: not JSON"),
        ("m.csv", "path,id\na.png,1\nb.png,1\n", "the id '1' names both"),
    ],
)
def test_a_bad_manifest_is_a_usage_error(
    tmp_path: Path, name: str, text: str, complaint: str
) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(UsageError, match=complaint):
        collect([str(tmp_path / name)])


def test_shards_are_a_stable_partition() -> None:
    items = [Item(f"scan-{i}", f"scan-{i}.png") for i in range(1_000)]
    parts = [in_shard(items, shard, 4) for shard in range(4)]
    assert sorted(i.id for part in parts for i in part) == sorted(i.id for i in items)
    assert all(200 < len(part) < 300 for part in parts), "a hash spreads the ids evenly"
    # The same id lands in the same shard on every machine, in every run and every release
    # (fixed values: a change of the hash would move items between shards of a running job).
    assert shard_of("scans/0001.png", 10) == 2
    assert shard_of("A-1", 3) == 2
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "1", "-1/3", "a/b", "0/0"):
        with pytest.raises(UsageError):
            parse_shard(bad)


def row(identifier: str, **fields: object) -> Row:
    return Row(identifier, f"{identifier}.png", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_rows_are_written_one_line_each_and_read_back(tmp_path: Path, kind: str) -> None:
    out = tmp_path / f"results.{kind}"
    writer = RowWriter(out)
    writer.write(row("a", digits="3", confidence=0.5, needs_review=True, reasons=["x", "y"]))
    writer.write(row('b, "quoted"', error="not_an_image", message="two\nlines"))
    writer.close()
    lines = out.read_text().splitlines()
    assert len(lines) == (3 if kind == "csv" else 2)
    read = read_rows(out)
    assert [r["id"] for r in read] == ["a", 'b, "quoted"']
    assert read[1]["message"] == "two lines"
    if kind == "csv":
        assert lines[0] == ",".join(COLUMNS)
        assert read[0]["reasons"] == "x;y"
        assert read[0]["needs_review"] == "true"
    else:
        assert read[0]["reasons"] == ["x", "y"]
        assert read[0]["needs_review"] is True


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_resume_drops_a_partial_last_line_and_appends_after_the_rest(
    tmp_path: Path, kind: str
) -> None:
    out = tmp_path / f"results.{kind}"
    writer = RowWriter(out)
    writer.write(row("a", digits="1"))
    writer.write(row("b", digits="2"))
    writer.close()
    partial = row_line(row("c", digits="3"), kind)[:-7]
    with out.open("a") as handle:
        handle.write(partial)
    resumed = RowWriter(out, resume=True)
    assert resumed.done == {"a", "b"}
    resumed.write(row("c", digits="3"))
    resumed.close()
    assert [r["id"] for r in read_rows(out)] == ["a", "b", "c"]
    assert partial not in out.read_text().replace(row_line(row("c", digits="3"), kind), "")


def test_an_existing_results_file_is_never_overwritten_by_accident(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    RowWriter(out).close()
    with pytest.raises(UsageError, match="exists"):
        RowWriter(out)
    RowWriter(out, overwrite=True).close()
    (tmp_path / "other.csv").write_text("name,value\nx,1\n")
    with pytest.raises(UsageError, match="header"):
        RowWriter(tmp_path / "other.csv", resume=True)
    (tmp_path / "other.jsonl").write_text(json.dumps({"name": "x"}) + "\n")
    with pytest.raises(UsageError, match="not a results file"):
        RowWriter(tmp_path / "other.jsonl", resume=True)
