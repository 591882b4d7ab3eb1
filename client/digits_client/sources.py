"""What to read: files, folders, globs and manifests turned into items with stable ids.

An item is an id and a path. Named on the command line, a file's id is its path as given; a
folder is walked recursively for images (by extension), each file's id its path under the
folder as given; a glob is expanded (``**`` included); a manifest (``.csv`` with a ``path``
column, or ``.jsonl`` of objects with ``path``) lists paths, relative to the manifest, with an
optional ``id`` each. Ids are what ``--resume`` and ``--shard`` go by, so they must be unique.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: What a folder is searched for, by default: the formats the service reads.
IMAGE_EXTENSIONS: Final = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MANIFEST_EXTENSIONS: Final = (".csv", ".jsonl", ".ndjson")


class UsageError(Exception):
    """Something named on the command line that cannot be read as asked."""


@dataclass(frozen=True)
class Item:
    """One thing to read: its id (unique in a run) and the path of its file."""

    id: str
    path: str


def collect(arguments: Sequence[str], extensions: Iterable[str] = IMAGE_EXTENSIONS) -> list[Item]:
    """Every item the arguments name, in order: the same file named twice is read once.

    Raises:
        UsageError: a path that does not exist, a glob that matches nothing, a bad manifest,
            or one id given to two different paths.
    """
    suffixes = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    items: dict[str, Item] = {}
    for argument in arguments:
        for item in _expand(argument, suffixes):
            known = items.get(item.id)
            if known is None:
                items[item.id] = item
            elif known.path != item.path:
                raise UsageError(f"the id {item.id!r} names both {known.path} and {item.path}")
    return list(items.values())


def _expand(argument: str, suffixes: tuple[str, ...]) -> Iterator[Item]:
    path = Path(argument)
    if path.is_dir():
        yield from _walk(argument, suffixes)
    elif path.is_file():
        if path.suffix.lower() in MANIFEST_EXTENSIONS:
            yield from read_manifest(path)
        else:
            yield Item(argument, argument)
    elif glob.has_magic(argument):
        matches = sorted(glob.glob(argument, recursive=True))
        if not matches:
            raise UsageError(f"{argument}: no file matches")
        for match in matches:
            if Path(match).is_dir():
                yield from _walk(match, suffixes)
            elif Path(match).suffix.lower() in suffixes:
                yield Item(match, match)
    else:
        raise UsageError(f"{argument}: no such file or folder")


def _walk(folder: str, suffixes: tuple[str, ...]) -> Iterator[Item]:
    """The images under a folder, recursively, in a fixed order (sorted by path)."""
    found: list[str] = []
    for root, directories, files in os.walk(folder):
        directories.sort()
        found += [os.path.join(root, name) for name in files if _has_suffix(name, suffixes)]
    for path in sorted(found):
        yield Item(path, path)


def _has_suffix(name: str, suffixes: tuple[str, ...]) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in suffixes


def read_manifest(manifest: Path) -> Iterator[Item]:
    """The items a CSV (``path`` column, optional ``id``) or JSONL manifest lists.

    Relative paths are relative to the manifest's folder. A path that does not exist is still
    an item: its row says ``file_not_found``.
    """
    base = manifest.parent
    rows: Iterable[tuple[int, object]]
    with manifest.open(newline="", encoding="utf-8") as handle:
        if manifest.suffix.lower() == ".csv":
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise UsageError(f"{manifest}: a CSV manifest needs a header with a 'path' column")
            rows = list(enumerate(reader, start=2))
        else:
            rows = []
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        rows.append((number, json.loads(line)))
                    except json.JSONDecodeError as exc:
                        raise UsageError(f"{manifest}:{number}: not JSON ({exc.msg})") from None
    for number, row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("path"), str) or not row["path"]:
            raise UsageError(f"{manifest}:{number}: no path")
        path = row["path"]
        resolved = path if os.path.isabs(path) else os.path.join(base, path)
        given = row.get("id")
        identifier = str(given) if given not in (None, "") else resolved
        yield Item(identifier, resolved)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` → (i, N), with 0 ≤ i < N."""
    index, slash, count = text.partition("/")
    if not slash or not index.strip().isdigit() or not count.strip().isdigit():
        raise UsageError(f"--shard {text}: write it i/N, e.g. 0/4 (the first of four shards)")
    shard, shards = int(index), int(count)
    if shards < 1 or shard >= shards:
        raise UsageError(f"--shard {text}: i goes from 0 to N-1 (0/{max(shards, 1)} is first)")
    return shard, shards


def shard_of(identifier: str, shards: int) -> int:
    """The shard an id falls in: a hash of the id, the same on every machine and every run."""
    digest = hashlib.sha256(identifier.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def in_shard(items: Iterable[Item], shard: int, shards: int) -> list[Item]:
    """The items of shard ``shard`` of ``shards``."""
    return [item for item in items if shard_of(item.id, shards) == shard]
