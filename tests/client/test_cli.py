"""``digits read`` against the real service: folders, manifests, bad files, shards, resume.

Most runs are in-process (Typer's runner); the resume test starts the command line as its own
process and kills it midway, as a crash or a Ctrl-C on a long run would.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from digits_client.run import STRING_BATCH_FILES
from digits_client.sources import collect, in_shard

from harness.servers import RunningServer, free_port
from tests.client.conftest import (
    EXAMPLES,
    REPO,
    SERVED_VERSION,
    digit_files,
    photo,
    rows,
    run_cli,
)

pytestmark = pytest.mark.slow


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """12 digits (two in a subfolder), and files that cannot be read."""
    folder = tmp_path / "scans"
    digit_files(folder, 10)
    digit_files(folder / "more", 2, start=10)
    (folder / "bad.png").write_text("this is not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not searched for: not an image extension")
    # A photo with 5.5 MB of trailing data: over the 5 MiB a request may hold.
    (folder / "too-big.jpg").write_bytes(photo(64, 64) + os.urandom(5_500_000))
    assert (folder / "too-big.jpg").stat().st_size > 5 * 1024 * 1024
    return folder


def test_a_folder_gets_a_row_per_file_and_bad_files_do_not_stop_the_run(
    server: RunningServer, mixed: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results.csv"
    result = run_cli("read", mixed, "--out", out, "--url", server.url, "--no-progress")
    assert result.exit_code == 1, result.stderr  # some items failed
    table = read_csv(out)
    assert list(table[0]) == [
        "id",
        "path",
        "digits",
        "confidence",
        "needs_review",
        "reasons",
        "model_version",
        "review_id",
        "error",
        "message",
    ]
    by_name = {Path(row["path"]).name: row for row in table}
    assert len(table) == 15, "one row per image file, notes.txt left out"
    assert len(by_name) == 15
    read = [row for row in table if not row["error"]]
    assert len(read) == 12
    served = str(SERVED_VERSION)
    assert all(row["digits"].isdigit() and row["model_version"] == served for row in read)
    assert all(0 <= float(row["confidence"]) <= 1 for row in read)
    assert all(row["needs_review"] in ("true", "false") for row in read)
    for name, code in [
        ("bad.png", "not_an_image"),
        ("empty.png", "empty_file"),
        ("too-big.jpg", "payload_too_large"),
    ]:
        assert by_name[name]["error"] == code
        assert by_name[name]["message"]
        assert by_name[name]["digits"] == ""
    # The summary is one line whatever the width (Rich folds lines at 80 columns off a terminal).
    (summary,) = [line for line in result.stderr.splitlines() if "15 items" in line]
    assert "12 read" in summary
    assert "3 refused" in summary
    assert "3 refused" in result.stderr
    for code in ("not_an_image 1", "empty_file 1", "payload_too_large 1"):
        assert code in result.stderr


def test_rows_go_to_stdout_as_json_lines_and_all_read_exits_0(server: RunningServer) -> None:
    result = run_cli("read", EXAMPLES / "digit.png", EXAMPLES / "digit-7.png", "--url", server.url)
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted((Path(r["path"]).name, r["digits"]) for r in lines) == [
        ("digit-7.png", "7"),
        ("digit.png", "3"),
    ]
    assert all(r["reasons"] == [] and r["error"] is None for r in lines)


def test_a_postal_code_is_read_as_a_string(server: RunningServer, tmp_path: Path) -> None:
    out = tmp_path / "codes.jsonl"
    postal = EXAMPLES / "postal-code.png"
    arguments = ["read", postal, "--recognize", "--url", server.url, "--out", out]
    result = run_cli(*arguments, "--expected-length", "5")
    assert result.exit_code == 0, result.stderr
    (row,) = rows(out)
    assert (row["digits"], row["needs_review"], row["reasons"]) == ("75011", False, [])
    result = run_cli(*arguments, "--expected-length", "6", "--overwrite")
    (row,) = rows(out)
    assert (row["digits"], row["needs_review"], row["reasons"]) == (
        "75011",
        True,
        ["length_mismatch"],
    )


def requests_to(server: RunningServer, route: str) -> float:
    """Requests the service answered on ``route``, from its Prometheus metrics."""
    text = httpx.get(f"{server.url}/metrics", headers={"Accept": "text/plain"}).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("digits_http_requests_total{") and f'endpoint="{route}"' in line
    )


def test_postal_codes_are_read_in_batches(server: RunningServer, tmp_path: Path) -> None:
    folder = tmp_path / "codes"
    folder.mkdir()
    for index in range(20):
        (folder / f"code-{index:02d}.png").write_bytes((EXAMPLES / "postal-code.png").read_bytes())
    (folder / "zz-bad.png").write_text("not an image")
    out = tmp_path / "codes.jsonl"
    batches, singles = requests_to(server, "/recognize/batch"), requests_to(server, "/recognize")
    result = run_cli(
        "read", folder, "--recognize", "--expected-length", "5", "--url", server.url, "--out", out
    )
    assert result.exit_code == 1, result.stderr  # the bad file
    table = {Path(str(row["path"])).name: row for row in rows(out)}
    assert len(table) == 21
    assert table.pop("zz-bad.png")["error"] == "not_an_image"
    assert {(row["digits"], row["needs_review"], row["error"]) for row in table.values()} == {
        ("75011", False, None)
    }
    assert all("review_id" in row for row in table.values())
    sent = requests_to(server, "/recognize/batch") - batches
    assert sent == -(-21 // STRING_BATCH_FILES), "21 strings in batches of the default size"
    assert requests_to(server, "/recognize") == singles, "no string sent alone"


def test_manifests_give_ids_and_a_missing_file_gets_its_row(
    server: RunningServer, tmp_path: Path
) -> None:
    digit_files(tmp_path / "images", 3)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "id,path\nA-1,images/digit-00000.png\nA-2,images/digit-00001.png\nA-3,images/gone.png\n"
    )
    listing = tmp_path / "more.jsonl"
    listing.write_text(
        json.dumps({"id": 7, "path": str(tmp_path / "images/digit-00002.png")}) + "\n"
    )
    out = tmp_path / "out.jsonl"
    result = run_cli("read", manifest, listing, "--url", server.url, "--out", out)
    assert result.exit_code == 1
    table = {row["id"]: row for row in rows(out)}
    assert set(table) == {"A-1", "A-2", "A-3", "7"}
    assert table["A-3"]["error"] == "file_not_found"
    assert table["A-3"]["path"] == str(tmp_path / "images" / "gone.png")
    assert all(table[i]["error"] is None for i in ("A-1", "A-2", "7"))


def test_shards_partition_the_items(server: RunningServer, tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    digit_files(folder, 40)
    items = collect([str(folder)])
    seen: list[str] = []
    for shard in range(3):
        out = tmp_path / f"shard-{shard}.jsonl"
        result = run_cli("read", folder, "--shard", f"{shard}/3", "--url", server.url, "--out", out)
        assert result.exit_code == 0, result.stderr
        ids = [row["id"] for row in rows(out)]
        assert sorted(ids) == sorted(item.id for item in in_shard(items, shard, 3))
        assert ids, "40 items over 3 shards: none is empty"
        seen += ids
    assert sorted(seen) == sorted(item.id for item in items), "every item once, in one shard"


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["nowhere/"], "no such file or folder"),
        (["scans/*.nothing"], "no file matches"),
        (["scans", "--shard", "3/3"], "--shard 3/3"),
        (["scans", "--shard", "half"], "--shard half"),
        (["scans", "--expected-length", "5"], "--expected-length goes with --recognize"),
        (["scans", "--out", "results.txt"], "name a .csv or .jsonl file"),
        (["scans", "--resume"], "--resume needs --out"),
        (["scans", "--out", "old.csv"], "old.csv exists"),
        (["scans", "--concurrency", "0"], "greater than or equal to"),
    ],
)
def test_usage_errors_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arguments: list[str], complaint: str
) -> None:
    monkeypatch.chdir(tmp_path)
    digit_files(tmp_path / "scans", 1)
    (tmp_path / "old.csv").write_text("id\n")
    result = run_cli("read", *arguments, "--url", "http://127.0.0.1:9")
    assert result.exit_code == 2, result.stdout + result.stderr
    assert complaint in " ".join(result.stderr.split())


def test_reviews_stats_asks_the_service_and_says_what_went_wrong(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    result = run_cli("reviews", "stats", "--url", nowhere)
    assert result.exit_code == 1, "the service is not there: not a usage error"
    assert "no connection was made" in " ".join(result.stderr.split())
    assert "stats" in run_cli("reviews", "--help").stdout


def test_a_service_that_cannot_be_reached_stops_the_run(tmp_path: Path) -> None:
    digit_files(tmp_path / "scans", 2)
    out = tmp_path / "out.csv"
    # A free loopback port: nothing listens, the connection is refused at once.
    nowhere = f"http://127.0.0.1:{free_port()}"
    arguments = ["read", tmp_path / "scans", "--url", nowhere, "--out", out]
    result = run_cli(*arguments, "--retries", "1")
    assert result.exit_code == 1
    assert "unavailable" in result.stderr
    assert "--resume" in result.stderr
    assert read_csv(out) == [], "no row for what was not read"


# ---------------------------------------------------------------- resume after a crash


def cli_process(arguments: list[str | Path]) -> subprocess.Popen[bytes]:
    """``python -m digits_client ARGUMENTS`` in its own process, as a user would start it."""
    environment = {**os.environ}
    client = str(REPO / "client")
    path = environment.get("PYTHONPATH", "")
    if client not in path.split(os.pathsep):
        environment["PYTHONPATH"] = os.pathsep.join(p for p in (client, path) if p)
    return subprocess.Popen(
        [sys.executable, "-m", "digits_client", *map(str, arguments)],
        cwd=REPO,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_resume_after_a_kill_loses_nothing_and_repeats_nothing(
    server: RunningServer, tmp_path: Path, kind: str
) -> None:
    folder = tmp_path / "scans"
    digit_files(folder, 600)
    (folder / "zz-bad.png").write_text("not an image")  # read last: after the kill
    common = [folder, "--url", server.url, "--no-progress"]

    whole = tmp_path / f"whole.{kind}"
    finished = cli_process(["read", *common, "--out", whole])
    assert finished.wait(timeout=300) == 1, finished.stderr.read() if finished.stderr else ""

    # Small batches, one at a time: the run takes long enough to be killed midway.
    out = tmp_path / f"results.{kind}"
    running = cli_process(
        ["read", *common, "--out", out, "--batch-size", "2", "--concurrency", "1"]
    )
    deadline = time.monotonic() + 120
    while complete_lines(out) < 60:
        assert running.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no rows written"
        time.sleep(0.005)
    running.send_signal(signal.SIGKILL)
    running.wait()
    killed_at = complete_lines(out)
    assert killed_at < 602, "killed midway"
    # A crash in the middle of a write leaves half a line: resume must drop it.
    with out.open("a") as handle:
        handle.write('{"id": "half a row' if kind == "jsonl" else "half,a,row")

    resumed = cli_process(["read", *common, "--out", out, "--resume"])
    assert resumed.wait(timeout=300) == 1
    report = resumed.stderr.read().decode() if resumed.stderr else ""
    header = 1 if kind == "csv" else 0
    assert f"skipped, already in {out}" in " ".join(report.split())

    def table(path: Path) -> dict[str, dict[str, object]]:
        found = read_csv(path) if kind == "csv" else rows(path)
        ids = [str(row["id"]) for row in found]
        assert len(ids) == len(set(ids)), f"{path.name}: an item written twice"
        return {str(row["id"]): dict(row) for row in found}

    assert out.read_text().endswith("\n")
    assert complete_lines(out) == 601 + header
    mine, theirs = table(out), table(whole)
    assert set(mine) == set(theirs)
    assert len(mine) == 601
    for key, row in mine.items():
        other = theirs[key]
        for column in ("path", "digits", "needs_review", "reasons", "model_version", "error"):
            assert row[column] == other[column], (key, column)
        if row["confidence"] not in (None, ""):
            # Batched differently, an image's scores may differ in their last bits.
            assert float(str(row["confidence"])) == pytest.approx(
                float(str(other["confidence"])), abs=1e-6
            )
