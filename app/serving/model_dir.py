"""The models directory: which version directories it holds, and what their content is.

The layout is TensorFlow Serving's: ``<models_dir>/<version>/``, the version an integer name.
:func:`scan_versions` lists them (bounded, whatever the directory holds) and reports names that
are not versions; :func:`content_fingerprint` says whether a version's files changed since it
failed; :func:`scrub_paths` keeps absolute paths out of the reasons shown in ``/model``.

Only regular files are ever read from it (and the version policy file): a FIFO blocks a reader
until someone writes to it and ``/dev/zero`` never ends, and either would stop the poller for
good. :func:`read_regular_file` reads such a file bounded; :func:`non_regular_files` lists what
a version directory holds besides regular files and directories, before it is loaded.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import stat
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
#: Files that are not regular named in a version's failure reason, at most.
MAX_REPORTED_FILES: Final = 5


class NotRegularFileError(ValueError):
    """A file that is not read: not a regular file (a FIFO, a device, a directory), or too large."""


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, for a reason a person reads ("a FIFO")."""
    kinds = (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((text for test, text in kinds if test(mode)), "not a regular file")


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file (symlinks followed) of at most ``max_bytes``.

    Anything else is refused before a byte is read: the type is checked with ``stat`` before
    opening (so no device is ever opened) and again with ``fstat`` on the descriptor, opened
    non-blocking (so a FIFO swapped in between cannot block), and at most ``max_bytes + 1``
    bytes are read (so a file growing meanwhile cannot make the read unbounded).

    Raises:
        NotRegularFileError: not a regular file, or larger than ``max_bytes``.
        OSError: it cannot be opened or read.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(f"{file_kind(mode)}, not a regular file")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(path, flags)
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"{file_kind(mode)}, not a regular file")
        chunks: list[bytes] = []
        remaining = max_bytes + 1
        while remaining > 0:
            chunk = os.read(descriptor, min(remaining, 1024 * 1024))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    finally:
        os.close(descriptor)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise NotRegularFileError(f"larger than {max_bytes} bytes")
    return data


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


def non_regular_files(path: Path) -> list[str]:
    """What under ``path`` is neither a regular file nor a directory (symlinks followed).

    A version holding a FIFO, a device or a socket is not loaded: reading it could block the
    store for good. Bounded like :func:`content_fingerprint`; entries that vanish while walked
    are skipped (the content fingerprint tells the store when to look again). Names are
    relative to ``path``, with their kind ("metrics.json (a FIFO)"), the first
    :data:`MAX_REPORTED_FILES` in walking order.
    """
    found: list[str] = []
    seen = 0
    stack: list[tuple[Path, str, int]] = [(path, "", 0)]
    while stack and seen <= FINGERPRINT_MAX_FILES and len(found) < MAX_REPORTED_FILES:
        directory, relative, depth = stack.pop()
        try:
            with os.scandir(directory) as iterator:
                entries = sorted(
                    itertools.islice(iterator, FINGERPRINT_MAX_FILES - seen + 1),
                    key=lambda e: e.name,
                )
        except OSError:
            continue
        for entry in entries:
            seen += 1
            name = f"{relative}/{entry.name}" if relative else entry.name
            try:
                mode = entry.stat(follow_symlinks=True).st_mode
            except OSError:
                continue
            if stat.S_ISDIR(mode):
                if depth < FINGERPRINT_MAX_DEPTH:
                    stack.append((Path(entry.path), name, depth + 1))
            elif not stat.S_ISREG(mode) and len(found) < MAX_REPORTED_FILES:
                found.append(f"{_printable(name)} ({file_kind(mode)})")
    return found


_ABSOLUTE_PATH: Final = re.compile(r"(?<![\w.~-])/(?:[^\s/:'\"]+/)*[^\s/:'\",;)\]]*")


def scrub_paths(text: str, version_dir: Path) -> str:
    """A reason with no absolute paths: the version's own files named relative to it."""
    for base in {str(version_dir.resolve()), str(version_dir.absolute()), str(version_dir)}:
        if base not in {"", "."}:
            text = text.replace(base, version_dir.name)
    text = _ABSOLUTE_PATH.sub(lambda m: Path(m.group()).name or "/", text)
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."
