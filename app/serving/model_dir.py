"""The models directory: which version directories it holds, and what their content is.

The layout is TensorFlow Serving's: ``<models_dir>/<version>/``, the version an integer name.
:func:`scan_versions` lists them (bounded, whatever the directory holds) and reports names that
are not versions; :func:`content_fingerprint` says whether a version's files changed since it
failed; :func:`scrub_paths` keeps absolute paths out of the reasons shown in ``/model``.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from app.serving.policy import parse_version_name

#: Entries of the models directory looked at per scan; the rest are not seen.
MAX_DIR_ENTRIES: Final = 10_000
#: Newest versions considered per scan (the policy and the gate look no further back).
MAX_VERSIONS: Final = 256
#: Files and depth a content fingerprint walks; beyond that the walk stops (still deterministic).
FINGERPRINT_MAX_FILES: Final = 10_000
FINGERPRINT_MAX_DEPTH: Final = 8
#: Ignored entries reported in /model (and logged), at most.
MAX_REPORTED_ENTRIES: Final = 20
MAX_REASON_CHARS: Final = 400


@dataclass(frozen=True)
class IgnoredEntry:
    """A directory in the models directory that is not a valid version name."""

    name: str
    """The name, printable and shortened."""
    reason: str


def _printable(name: str) -> str:
    text = name.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= 40 else text[:37] + "..."


def scan_versions(models_dir: Path) -> tuple[list[int], list[IgnoredEntry]]:
    """Version directories (oldest first, the newest :data:`MAX_VERSIONS`) and bad names.

    Hidden entries (staging copies such as ``.tmp-3``) and plain files are skipped silently;
    any other directory whose name is not a version number is reported, never fatal.
    """
    versions: list[int] = []
    ignored: list[IgnoredEntry] = []
    try:
        with os.scandir(models_dir) as entries:
            for entry in itertools.islice(entries, MAX_DIR_ENTRIES):
                if entry.name.startswith("."):
                    continue
                try:
                    if not entry.is_dir():
                        continue
                except OSError:
                    continue
                parsed = parse_version_name(entry.name)
                if isinstance(parsed, int):
                    versions.append(parsed)
                elif len(ignored) < MAX_REPORTED_ENTRIES:
                    ignored.append(IgnoredEntry(_printable(entry.name), parsed))
    except OSError:
        return [], []
    versions.sort()
    return versions[-MAX_VERSIONS:], sorted(ignored, key=lambda e: e.name)


def versions_on_disk(models_dir: Path) -> list[int]:
    """Valid version directories, newest first; hidden and other names are ignored."""
    return scan_versions(models_dir)[0][::-1]


def content_fingerprint(path: Path) -> str:
    """A digest of every file's relative path, size and modification time under ``path``.

    Bounded by :data:`FINGERPRINT_MAX_FILES` and :data:`FINGERPRINT_MAX_DEPTH`. A copy in
    progress changes it with every file written; a finished copy leaves it fixed.
    """
    digest = hashlib.sha256()
    seen = 0
    stack: list[tuple[Path, str, int]] = [(path, "", 0)]
    while stack:
        directory, relative, depth = stack.pop()
        try:
            with os.scandir(directory) as iterator:
                entries = sorted(
                    itertools.islice(iterator, FINGERPRINT_MAX_FILES - seen + 1),
                    key=lambda e: e.name,
                )
        except OSError as exc:
            digest.update(f"!{relative}:{type(exc).__name__}\n".encode())
            continue
        for entry in entries:
            seen += 1
            if seen > FINGERPRINT_MAX_FILES:
                digest.update(b"...")
                return digest.hexdigest()
            name = f"{relative}/{entry.name}"
            try:
                stat = entry.stat(follow_symlinks=True)
                is_dir = entry.is_dir()
            except OSError:
                digest.update(f"?{name}\n".encode("utf-8", "backslashreplace"))
                continue
            digest.update(
                f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\0{int(is_dir)}\n".encode(
                    "utf-8", "backslashreplace"
                )
            )
            if is_dir and depth < FINGERPRINT_MAX_DEPTH:
                stack.append((Path(entry.path), name, depth + 1))
    return digest.hexdigest()


_ABSOLUTE_PATH: Final = re.compile(r"(?<![\w.~-])/(?:[^\s/:'\"]+/)*[^\s/:'\",;)\]]*")


def scrub_paths(text: str, version_dir: Path) -> str:
    """A reason with no absolute paths: the version's own files named relative to it."""
    for base in {str(version_dir.resolve()), str(version_dir.absolute()), str(version_dir)}:
        if base not in {"", "."}:
            text = text.replace(base, version_dir.name)
    text = _ABSOLUTE_PATH.sub(lambda m: Path(m.group()).name or "/", text)
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."
