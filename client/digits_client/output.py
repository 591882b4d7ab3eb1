"""The results file: one row per item, written the moment it is known, and read back to resume.

Each row is one line (CSV or JSON Lines, by the file's extension), written and flushed at once,
so a run that is killed loses no row it had. A killed run may leave half a line at the end:
:class:`RowWriter` opened to resume reads the complete lines, drops the partial one and appends
after the last complete line, so the file ends up as if the run had never stopped.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from digits_client.sources import UsageError

#: The columns, in order.
COLUMNS: Final = (
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
)
#: The columns of a results file written before ``review_id``: resumed in its own columns.
COLUMNS_BEFORE_REVIEWS: Final = tuple(column for column in COLUMNS if column != "review_id")


@dataclass(frozen=True)
class Row:
    """What is known of one item: its reading, or the code of the error that stopped it."""

    id: str
    path: str
    digits: str | None = None
    confidence: float | None = None
    needs_review: bool | None = None
    reasons: list[str] = field(default_factory=list)
    """Review reason codes (``low_confidence``, ``length_mismatch``, ...)."""
    model_version: int | None = None
    review_id: str | None = None
    """The service's review queue id, when it stored the reading for a person to check."""
    error: str | None = None
    """The error code (``not_an_image``, ``file_not_found``, ...); None when read."""
    message: str | None = None
    """The error's message, for a person."""


def output_format(path: Path) -> str:
    """``csv`` or ``jsonl``, from the file's extension."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise UsageError(f"--out {path}: name a .csv or .jsonl file")


def row_line(row: Row, kind: str, columns: tuple[str, ...] = COLUMNS) -> str:
    """One row as one line of the format (a CSV line of ``columns``), ending in a newline."""
    values = asdict(row)
    if row.message is not None:
        values["message"] = " ".join(row.message.split())  # one physical line, always
    if kind == "jsonl":
        return json.dumps(values, ensure_ascii=False) + "\n"
    cells = [_cell(values[column]) for column in columns]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ";".join(value)
    return str(value)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The complete rows of a results file (a partial last line is left out)."""
    text = path.read_text(encoding="utf-8")
    complete = text[: text.rfind("\n") + 1]
    if output_format(path) == "jsonl":
        return [json.loads(line) for line in complete.splitlines() if line.strip()]
    return list(csv.DictReader(io.StringIO(complete)))


class RowWriter:
    """Writes rows to a results file (or JSON Lines to stdout), each flushed as it is written.

    ``resume``: the ids already in the file are :attr:`done` and new rows are appended.
    Without it an existing file is refused unless ``overwrite``.
    """

    def __init__(self, path: Path | None, *, resume: bool = False, overwrite: bool = False) -> None:
        self.path = path
        self.done: set[str] = set()
        self.kind = "jsonl" if path is None else output_format(path)
        self.columns: tuple[str, ...] = COLUMNS
        """The CSV columns written: a resumed file's own."""
        if path is None:
            self._handle: IO[str] = sys.stdout
            return
        exists = path.exists() and path.stat().st_size > 0
        if exists and not (resume or overwrite):
            raise UsageError(
                f"{path} exists: --resume to read only what it lacks, --overwrite to start over"
            )
        if exists and resume:
            self.done = self._complete_ids(path)
            self._handle = path.open("a", encoding="utf-8", newline="")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = path.open("w", encoding="utf-8", newline="")
            if self.kind == "csv":
                self._write(",".join(COLUMNS) + "\n")

    def _complete_ids(self, path: Path) -> set[str]:
        """The ids of the complete rows; cuts the file after its last complete line."""
        with path.open("r+b") as handle:
            data = handle.read()
            end = data.rfind(b"\n") + 1
            if end < len(data):
                handle.truncate(end)
        if self.kind == "csv":
            header = tuple(data[: data.find(b"\n")].decode("utf-8").split(","))
            if header not in (COLUMNS, COLUMNS_BEFORE_REVIEWS):
                raise UsageError(f"{path}: not a results file of this version (its header)")
            self.columns = header
        try:
            return {str(row["id"]) for row in read_rows(path)}
        except (ValueError, KeyError) as exc:
            raise UsageError(f"{path}: not a results file ({exc})") from None

    def _write(self, line: str) -> None:
        self._handle.write(line)
        self._handle.flush()

    def write(self, row: Row) -> None:
        """Append one row, flushed to the file at once."""
        self._write(row_line(row, self.kind, self.columns))
        self.done.add(row.id)

    def close(self) -> None:
        """Close the file (never stdout)."""
        if self.path is not None:
            self._handle.close()
