"""Memory benchmark: does the service's resident memory stay put under sustained and hostile load?

Against a fresh uvicorn server (one worker, the public app, default settings):

1. 1,000 warm-up requests (valid 28×28 PNG digits), then read VmRSS;
2. 20,000 more valid requests: the growth must be at most 20 MB;
3. 1,000 hostile inputs, a mix of every kind of bad upload the service refuses (garbage,
   truncated PNG, decompression-bomb header, unsupported format, empty file, blank image,
   bodies over the upload limit with and without Content-Length, wrong form field, too many
   files) plus large pen-on-paper photos that must be decoded: the growth must be at most 50 MB.

Every answer's status is checked, so a run that "passes" by failing requests is visible.
The client is asyncio + httpx with 16 concurrent connections, in this process (the server runs in
its own). Run alone: ``python benchmarks/bench_memory.py``; bench_serving.py runs it too.

``--hostile-work`` runs instead, at full size, every attack that once cost the service seconds
to minutes of CPU, hundreds of MiB to gigabytes of memory, or its poller, and prints one table
(with the machine it ran on). On one fresh server (one worker, default settings plus the gRPC
port, DIGITS_GRPC_PORT):

* the costly decodes found earlier (rows D1 to D4), thin strips to /recognize (row 1) and infer
  requests naming one output 20,000 times over REST (row 2) and gRPC (row 3): each sent once
  alone (answer, time), then 64 times by 16 concurrent clients;
* 3,000 connections to the gRPC port left idle, raw and after the HTTP/2 preface (row 4): how
  many the server still holds 1 s later and once its handshake or idle time has passed;
* 200 calls of the gRPC methods the service does not implement (row 7): their status and the
  server log's growth.

Then a fresh server per hostile file, on a temporary copy of the models directory: models.config
(DIGITS_VERSION_CONFIG) nested 3,000 deep or holding a 5,000-digit number (row 5), or a FIFO
(row 6); the newest version's likeness.npz of 20,000 components per class (row 8) or its
reader.json nested 100,000 deep (row 9): whether the server becomes ready, what /model says of
the file, whether the poller goes on.

For each row: the worker's peak RSS (VmHWM, reset through /proc/<pid>/clear_refs before each
attack on the shared server; from its start on a server of its own), and valid /predict uploads
sent one at a time by a side loop meanwhile (after, for row 7, whose log they would grow): how
many answered 200 and the slowest. The bound of every row: peak RSS under 1.5 GiB, every side
request 200, every answer as expected.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import shutil
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc
import httpx
import numpy as np
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.settings import Settings
from benchmarks.machine import machine_lines
from harness.attacks import (
    bar_png,
    blank_one_bit_png,
    deeply_nested_config,
    deeply_nested_json,
    huge_number_config,
    long_stroke_png,
    oversized_likeness_basis,
    progressive_jpeg_with_repeated_scan,
    thin_strip_png,
)
from harness.attacks_protocols import (
    call_method,
    open_count,
    open_idle,
    repeated_outputs_grpc,
    repeated_outputs_rest,
    unserved_methods,
)
from harness.bodies import digit_images, multipart, png
from harness.servers import HOST, REPO, RunningServer, ServerError, free_port

WARMUP = 1_000
REQUESTS = 20_000
HOSTILE = 1_000
CONCURRENCY = 16
TARGET_GROWTH_MB = 20.0
TARGET_HOSTILE_MB = 50.0
# The service's default upload limit (DIGITS_MAX_UPLOAD_BYTES); the server runs with defaults.
UPLOAD_LIMIT = 5 * 1024 * 1024


@dataclass(frozen=True)
class Request:
    """One request to send and the status it must get."""

    kind: str
    path: str
    expected: int
    content: bytes | None = None
    content_type: str | None = None
    chunked_bytes: int = 0


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A valid PNG header declaring a huge image, with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(bytes(1024))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def photo_jpeg(digit: np.ndarray, width: int = 1600, height: int = 1200) -> bytes:
    """A phone-photo-sized JPEG of a digit in dark ink on light paper."""
    big = Image.fromarray(255 - digit).resize((height // 2, height // 2))
    paper = Image.new("L", (width, height), 230)
    paper.paste(big, (width // 3, height // 4))
    buffer = io.BytesIO()
    paper.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def hostile_requests(images: np.ndarray) -> list[Request]:
    """One request of each hostile kind (cycled to build the hostile phase)."""
    rng = np.random.default_rng(1)
    good = png(images[0])
    tiff = io.BytesIO()
    Image.fromarray(images[0]).save(tiff, "TIFF")

    def upload(data: bytes, name: str = "file") -> tuple[bytes, str]:
        return multipart(name, [data])

    kinds: list[tuple[str, str, int, tuple[bytes, str] | None, int]] = [
        ("garbage bytes", "/predict", 400, upload(rng.bytes(4096)), 0),
        ("truncated PNG", "/predict", 400, upload(png(images[1])[:120]), 0),
        ("decompression-bomb header", "/predict", 413, upload(bomb_png()), 0),
        ("unsupported format (TIFF)", "/predict", 415, upload(tiff.getvalue()), 0),
        ("empty file", "/predict", 400, upload(b""), 0),
        ("blank image", "/predict", 422, upload(png(np.zeros((28, 28), np.uint8))), 0),
        ("wrong form field", "/predict", 422, upload(good, "image"), 0),
        ("over the limit, Content-Length", "/predict", 413, upload(bytes(UPLOAD_LIMIT + 1)), 0),
        ("over the limit, chunked", "/predict", 413, None, UPLOAD_LIMIT + 65_536),
        ("too many files", "/predict/batch", 413, multipart("files", [good] * 300), 0),
        ("pen-on-paper photo 1600×1200", "/predict", 200, upload(photo_jpeg(images[2])), 0),
    ]
    requests = []
    for kind, path, expected, body, chunked in kinds:
        content, content_type = body if body is not None else (None, None)
        requests.append(Request(kind, path, expected, content, content_type, chunked))
    return requests


async def _chunks(total: int, size: int = 65_536) -> AsyncIterator[bytes]:
    boundary = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    yield boundary
    sent = len(boundary)
    block = bytes(size)
    while sent < total:
        yield block
        sent += size


async def send(client: httpx.AsyncClient, request: Request) -> int:
    """Send one request; the status code, or 0 for a connection error."""
    try:
        if request.chunked_bytes:
            response = await client.post(
                request.path,
                content=_chunks(request.chunked_bytes),
                headers={"Content-Type": "multipart/form-data; boundary=x"},
            )
        else:
            assert request.content_type is not None
            response = await client.post(
                request.path,
                content=request.content,
                headers={"Content-Type": request.content_type},
            )
    except httpx.TransportError:
        return 0
    return response.status_code


async def drive(
    url: str, requests: list[Request], count: int, concurrency: int = CONCURRENCY
) -> Counter[tuple[str, int, int]]:
    """Send ``count`` requests cycling through ``requests``; count (kind, expected, got)."""
    outcomes: Counter[tuple[str, int, int]] = Counter()
    next_index = 0

    async def client_loop() -> None:
        nonlocal next_index
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            while next_index < count:
                request = requests[next_index % len(requests)]
                next_index += 1
                status = await send(client, request)
                outcomes[(request.kind, request.expected, status)] += 1

    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return outcomes


@dataclass
class MemoryResult:
    """RSS readings of one run and the answers it got."""

    rss_after_warmup: float = 0.0
    rss_after_requests: float = 0.0
    rss_after_hostile: float = 0.0
    valid: Counter[tuple[str, int, int]] = field(default_factory=Counter)
    hostile: Counter[tuple[str, int, int]] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def growth(self) -> float:
        """MB gained over the valid requests after warm-up."""
        return self.rss_after_requests - self.rss_after_warmup

    @property
    def hostile_growth(self) -> float:
        """MB gained over the hostile inputs."""
        return self.rss_after_hostile - self.rss_after_requests

    @property
    def wrong_answers(self) -> int:
        """Requests that did not get the status they should have."""
        return sum(n for (_, want, got), n in (self.valid + self.hostile).items() if want != got)

    def print_table(self) -> None:
        """Markdown tables of the readings and of the hostile answers."""
        print(f"## Memory (RSS of the server process, MB = 2^20 bytes; {self.seconds:.0f} s)\n")
        print("| phase | requests | RSS after | growth | bound | wrong status |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        valid_wrong = sum(n for (_, want, got), n in self.valid.items() if want != got)
        hostile_wrong = sum(n for (_, want, got), n in self.hostile.items() if want != got)
        print(f"| warm-up | {WARMUP:,} | {self.rss_after_warmup:.1f} MB | | | |")
        print(
            f"| valid digits | {REQUESTS:,} | {self.rss_after_requests:.1f} MB "
            f"| {self.growth:+.1f} MB | ≤ {TARGET_GROWTH_MB:g} MB | {valid_wrong} |"
        )
        print(
            f"| hostile inputs | {HOSTILE:,} | {self.rss_after_hostile:.1f} MB "
            f"| {self.hostile_growth:+.1f} MB | ≤ {TARGET_HOSTILE_MB:g} MB | {hostile_wrong} |"
        )
        print("\n| hostile kind | sent | expected status | statuses received |")
        print("| --- | ---: | ---: | --- |")
        per_kind: dict[str, Counter[int]] = {}
        expected: dict[str, int] = {}
        for (kind, want, got), n in self.hostile.items():
            per_kind.setdefault(kind, Counter())[got] += n
            expected[kind] = want
        for kind, statuses in per_kind.items():
            received = ", ".join(f"{s}×{n}" for s, n in sorted(statuses.items()))
            print(f"| {kind} | {sum(statuses.values())} | {expected[kind]} | {received} |")

    def checks(self) -> list[tuple[str, str, bool]]:
        """(target, measured, met) rows for the summary."""
        return [
            (
                f"RSS growth ≤ {TARGET_GROWTH_MB:g} MB over {REQUESTS:,} requests",
                f"{self.growth:+.1f} MB",
                self.growth <= TARGET_GROWTH_MB,
            ),
            (
                f"RSS growth ≤ {TARGET_HOSTILE_MB:g} MB over {HOSTILE:,} hostile inputs",
                f"{self.hostile_growth:+.1f} MB",
                self.hostile_growth <= TARGET_HOSTILE_MB,
            ),
            (
                "every memory-run request got its expected status",
                f"{self.wrong_answers} wrong",
                self.wrong_answers == 0,
            ),
        ]


def run_memory_benchmark(models_dir: Path, log_dir: Path) -> MemoryResult:
    """Start a fresh server and run the three phases against it."""
    images, _ = digit_images(256)
    valid = [
        Request("valid digit", "/predict", 200, *multipart("file", [png(image)]))
        for image in images
    ]
    hostile = hostile_requests(images)
    result = MemoryResult()
    started = time.perf_counter()
    server = RunningServer.start(models_dir, log_dir / "memory.log")
    try:
        rss: Callable[[], float] = server.rss_mib
        asyncio.run(drive(server.url, valid, WARMUP))
        result.rss_after_warmup = rss()
        result.valid = asyncio.run(drive(server.url, valid, REQUESTS))
        result.rss_after_requests = rss()
        result.hostile = asyncio.run(drive(server.url, hostile, HOSTILE))
        result.rss_after_hostile = rss()
    finally:
        server.stop()
    result.seconds = time.perf_counter() - started
    return result


# --- hostile work: the costly decodes, then the protocols' and the poller's files' attacks -------

#: The bound of every row: the worker's peak RSS (one worker, serving in the launcher's process).
TABLE_BOUND_MIB = 1536.0
#: Issue 9's own bound for its rows (D1 to D4), still reported.
HOSTILE_WORK_BOUND_MIB = 1024.0
HOSTILE_WORK_REQUESTS = 64  # per request-shaped attack, from CONCURRENCY clients
#: The repeated-output infer requests (rows 2 and 3): images in each, times the output is named.
INFER_IMAGES = 256
REPEATED_OUTPUTS = 20_000
IDLE_CONNECTIONS = 3_000
UNIMPLEMENTED_CALLS = 200
#: A few log lines in all would do; the bug wrote an ERROR and a traceback per call (220 KB).
LOG_GROWTH_BOUND_BYTES = 1_000
#: Pause between two side requests: often enough to see a stall, too rarely to load the server.
SIDE_PAUSE_SECONDS = 0.1
#: Side requests sent after an attack, where they cannot run during it (row 7: the log).
SIDE_AFTER = 20
#: How long a server started on a hostile file is watched once ready (it polls every 2 s).
FILE_WATCH_SECONDS = 6.0
#: The gRPC client's own message limits, above anything the server may answer.
_GRPC_OPTIONS: Final = [
    ("grpc.max_receive_message_length", 1 << 30),
    ("grpc.max_send_message_length", 1 << 30),
]
_DEFAULTS: Final = Settings.model_fields


@dataclass(frozen=True)
class Attack:
    """One costly request, the endpoint it is sent to and the status it must get."""

    row: str
    kind: str
    path: str
    data: bytes
    expected: int
    shed: bool = False
    """Whether 503 ``deadline_exceeded`` is a right answer too when many are sent at once: work
    that queues for the large-image threads past the request deadline is dropped."""
    also: frozenset[int] = frozenset()
    """Other right answers, alone or not (a thin strip may be read or refused: both are cheap)."""
    headers: tuple[tuple[str, str], ...] = ()
    """When set: ``data`` is the whole body, sent with these headers (not a multipart upload)."""

    def request(self) -> tuple[bytes, dict[str, str]]:
        """The body and headers to send."""
        if self.headers:
            return self.data, dict(self.headers)
        body, content_type = multipart("file", [self.data])
        return body, {"Content-Type": content_type}

    @property
    def right_alone(self) -> frozenset[int]:
        """The statuses right for the attack sent alone."""
        return frozenset({self.expected}) | self.also

    @property
    def right_many(self) -> frozenset[int]:
        """The statuses right for it sent by many clients at once."""
        return self.right_alone | (frozenset({503}) if self.shed else frozenset())


def hostile_work_attacks() -> list[Attack]:
    """The costly decodes found earlier, rows 1-4, at their full size."""
    one_bit = blank_one_bit_png(5_000)
    return [
        Attack("D1", "1×96,000 PNG, 32,000-px stroke", "/recognize", long_stroke_png(), 200),
        Attack("D1", "1×96,000 PNG, 32,000-px stroke", "/predict", long_stroke_png(), 200),
        Attack("D2", "20000×50 PNG, 4-px bar", "/recognize", bar_png(), 422),
        Attack(
            "D3",
            "5000×5000 progressive JPEG, last scan ×1,000",
            "/predict",
            progressive_jpeg_with_repeated_scan(5_000, 1_000),
            422,
        ),
        # The most a JPEG may cost: as many scans as the default cap allows (blank: 422).
        Attack(
            "D3",
            "5000×5000 progressive JPEG, 32 scans (the cap)",
            "/predict",
            progressive_jpeg_with_repeated_scan(5_000, 32 - 6),
            422,
            shed=True,
        ),
        Attack("D4", "5000×5000 1-bit PNG", "/predict", one_bit, 200),
        Attack("D4", "5000×5000 1-bit PNG", "/recognize", one_bit, 200),
    ]


def strip_and_infer_attacks() -> list[Attack]:
    """Rows 1 and 2 at full size: thin strips to /recognize, and the REST infer request naming
    one output 20,000 times."""
    read_or_refused = frozenset({422})
    images = np.zeros((INFER_IMAGES, 28, 28), np.uint8)
    body, headers = repeated_outputs_rest(images, "probabilities", REPEATED_OUTPUTS)
    return [
        Attack(
            "1",
            "4096×20 PNG, one stroke",
            "/recognize",
            thin_strip_png(),
            200,
            also=read_or_refused,
        ),
        Attack(
            "1",
            "20000×50 PNG, one stroke",
            "/recognize",
            thin_strip_png(20_000, 50),
            200,
            also=read_or_refused,
        ),
        Attack(
            "1",
            "20000×50 PNG, full-width bar",
            "/recognize",
            thin_strip_png(20_000, 50, bar=True),
            200,
            also=read_or_refused,
        ),
        Attack(
            "2",
            f"infer, {INFER_IMAGES} images, 'probabilities' named {REPEATED_OUTPUTS:,} times",
            "/v2/models/mnist/infer",
            body,
            400,
            headers=tuple(headers.items()),
        ),
    ]


@dataclass
class Row:
    """One row of the hostile-work table: what was done, what came back, what it cost."""

    row: str
    attack: str
    target: str
    once: str = "—"
    many: str = "—"
    seen: str = ""
    rss_before: float | None = None
    """MiB when the attack began (None: a server of its own, measured from its start)."""
    peak_rss: float = 0.0
    side: Counter[int] = field(default_factory=Counter)
    side_worst: float = 0.0
    side_after: bool = False
    """Whether the side requests were sent after the attack rather than during it."""
    problems: list[str] = field(default_factory=list)

    @property
    def side_ok(self) -> bool:
        """Every side request was sent and answered 200."""
        return sum(self.side.values()) > 0 and set(self.side) == {200}

    @property
    def met(self) -> bool:
        """Answers as expected, peak RSS under the bound, and every side request 200."""
        return not self.problems and 0 < self.peak_rss < TABLE_BOUND_MIB and self.side_ok


class SideLoad:
    """Valid ``/predict`` uploads sent one at a time from a thread (a pause between each)
    while an attack runs: how many answered what, and the slowest answer."""

    def __init__(self, url: str, bodies: list[tuple[bytes, str]], count: int | None = None):
        self.url, self.bodies, self.count = url, bodies, count
        self.statuses: Counter[int] = Counter()
        self.worst = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="side-load", daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as client:
            sent = 0
            while not self._stop.is_set() and (self.count is None or sent < self.count):
                body, content_type = self.bodies[sent % len(self.bodies)]
                sent += 1
                started = time.perf_counter()
                try:
                    status = client.post(
                        "/predict", content=body, headers={"Content-Type": content_type}
                    ).status_code
                except httpx.HTTPError:
                    status = 0
                self.worst = max(self.worst, time.perf_counter() - started)
                self.statuses[status] += 1
                self._stop.wait(SIDE_PAUSE_SECONDS)

    def __enter__(self) -> SideLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.count is None:
            self._stop.set()
        self._thread.join()


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def _reset_peak_rss(pid: int) -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+).
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@contextlib.contextmanager
def _recorded(row: Row) -> Iterator[None]:
    """A row that fails with an exception is a finding of the table, not the end of the run."""
    try:
        yield
    except Exception as exc:
        row.problems.append(f"{type(exc).__name__}: {str(exc)[:300]}")


@contextlib.contextmanager
def _measured(server: RunningServer, row: Row, side: list[tuple[bytes, str]]) -> Iterator[None]:
    """Peak RSS from here (VmHWM reset) and side requests while the block runs."""
    row.rss_before = server.rss() / 2**20
    _reset_peak_rss(server.pid)
    with SideLoad(server.url, side) as load:
        yield
    row.peak_rss = _peak_rss_mib(server.pid)
    row.side, row.side_worst = load.statuses, load.worst


def _size(count: int) -> str:
    if count < 10_000:
        return f"{count:,} bytes"
    if count < 2**20:
        return f"{count / 1024:.0f} KiB"
    return f"{count / 2**20:.2f} MiB"


def _counts(outcomes: Counter[int] | Counter[str]) -> str:
    return ", ".join(f"{key}×{n}" for key, n in sorted(outcomes.items(), key=lambda kv: str(kv[0])))


async def _http_many(
    url: str, path: str, body: bytes, headers: dict[str, str], count: int, clients: int
) -> tuple[Counter[int], int]:
    """Send ``count`` requests from ``clients`` connections: the statuses (0: no answer) and the
    largest answer's size."""
    statuses: Counter[int] = Counter()
    largest = sent = 0

    async def client_loop() -> None:
        nonlocal largest, sent
        async with httpx.AsyncClient(base_url=url, timeout=600) as client:
            while sent < count:
                sent += 1
                try:
                    response = await client.post(path, content=body, headers=headers)
                except httpx.TransportError:
                    statuses[0] += 1
                    continue
                statuses[response.status_code] += 1
                largest = max(largest, len(response.content))

    await asyncio.gather(*(client_loop() for _ in range(min(clients, count))))
    return statuses, largest


async def _grpc_many(
    target: str, request: Any, count: int, clients: int
) -> tuple[Counter[str], int]:
    """Send ``count`` ModelInfer calls from ``clients`` channels: the status codes and the
    largest answer's size (the error message's, for a refusal)."""
    codes: Counter[str] = Counter()
    largest = sent = 0

    async def client_loop() -> None:
        nonlocal largest, sent
        async with grpc.aio.insecure_channel(target, options=_GRPC_OPTIONS) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            while sent < count:
                sent += 1
                try:
                    response = await stub.ModelInfer(request, timeout=600)
                except grpc.aio.AioRpcError as error:
                    codes[error.code().name] += 1
                    largest = max(largest, len((error.details() or "").encode()))
                    continue
                codes["OK"] += 1
                largest = max(largest, response.ByteSize())

    await asyncio.gather(*(client_loop() for _ in range(min(clients, count))))
    return codes, largest


def _upload_row(server: RunningServer, attack: Attack, side: list[tuple[bytes, str]]) -> Row:
    """An HTTP attack sent once alone, then HOSTILE_WORK_REQUESTS times by CONCURRENCY clients."""
    body, headers = attack.request()
    row = Row(attack.row, f"{attack.kind} ({_size(len(attack.data))})", attack.path)
    with _recorded(row):
        with _measured(server, row, side):
            started = time.perf_counter()
            alone, largest = asyncio.run(_http_many(server.url, attack.path, body, headers, 1, 1))
            alone_seconds = time.perf_counter() - started
            started = time.perf_counter()
            many, largest_many = asyncio.run(
                _http_many(
                    server.url, attack.path, body, headers, HOSTILE_WORK_REQUESTS, CONCURRENCY
                )
            )
            many_seconds = time.perf_counter() - started
        (status,) = alone
        row.once = f"{status}, {alone_seconds:.2f} s"
        row.many = f"{HOSTILE_WORK_REQUESTS}, {many_seconds:.1f} s, {_counts(many)}"
        row.seen = f"largest answer {_size(max(largest, largest_many))}"
        if status not in attack.right_alone:
            row.problems.append(f"alone: {status}, not {sorted(attack.right_alone)}")
        if not set(many) <= attack.right_many:
            row.problems.append(f"{CONCURRENCY} clients: {_counts(many)}")
    return row


def _grpc_infer_row(server: RunningServer, target: str, side: list[tuple[bytes, str]]) -> Row:
    """Row 3: ModelInfer naming one output 20,000 times, alone and by CONCURRENCY clients."""
    images = np.zeros((INFER_IMAGES, 28, 28), np.uint8)
    request = repeated_outputs_grpc(images, "probabilities", REPEATED_OUTPUTS)
    row = Row(
        "3",
        f"ModelInfer, {INFER_IMAGES} images, 'probabilities' named {REPEATED_OUTPUTS:,} times "
        f"({_size(request.ByteSize())})",
        "gRPC ModelInfer",
    )
    with _recorded(row):
        with _measured(server, row, side):
            started = time.perf_counter()
            alone, largest = asyncio.run(_grpc_many(target, request, 1, 1))
            alone_seconds = time.perf_counter() - started
            started = time.perf_counter()
            many, largest_many = asyncio.run(
                _grpc_many(target, request, HOSTILE_WORK_REQUESTS, CONCURRENCY)
            )
            many_seconds = time.perf_counter() - started
        (code,) = alone
        row.once = f"{code}, {alone_seconds:.2f} s"
        row.many = f"{HOSTILE_WORK_REQUESTS}, {many_seconds:.1f} s, {_counts(many)}"
        row.seen = f"largest answer {_size(max(largest, largest_many))}"
        if set(alone) | set(many) != {"INVALID_ARGUMENT"}:
            row.problems.append(f"answers {_counts(alone + many)}, not INVALID_ARGUMENT")
    return row


def _grpc_served(target: str) -> bool:
    """Whether a new connection's ServerLive call is answered live."""
    with grpc.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            return bool(stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live)
        except grpc.RpcError:
            return False


def _idle_row(
    server: RunningServer, port: int, side: list[tuple[bytes, str]], *, http2: bool
) -> Row:
    """Row 4: IDLE_CONNECTIONS connections opened to the gRPC port and left idle."""
    setting = "grpc_max_connection_idle_seconds" if http2 else "grpc_handshake_timeout_seconds"
    limit = float(_DEFAULTS[setting].default)
    cap = int(_DEFAULTS["grpc_max_connections"].default)
    kind = "HTTP/2 preface, then nothing" if http2 else "raw TCP, nothing sent"
    row = Row("4", f"{IDLE_CONNECTIONS:,} idle connections, {kind}", "gRPC port")
    with _recorded(row):
        with _measured(server, row, side):
            started = time.monotonic()
            sockets, failed = open_idle(HOST, port, IDLE_CONNECTIONS, http2=http2)
            try:
                opened = time.monotonic()
                time.sleep(1.0)
                held_first = open_count(sockets)
                deadline = opened + limit + 30
                held = held_first
                while held and time.monotonic() < deadline:
                    time.sleep(0.5)
                    held = open_count(sockets)
                closed_after = time.monotonic() - opened
            finally:
                for sock in sockets:
                    sock.close()
            served = _grpc_served(f"{HOST}:{port}")
        row.many = f"{IDLE_CONNECTIONS:,} opened in {opened - started:.1f} s" + (
            f" ({failed:,} not accepted)" if failed else ""
        )
        left = "none" if not held else f"{held:,} still"
        row.seen = (
            f"open 1 s later: {held_first:,} (cap {cap}); {left} open {closed_after:.0f} s "
            f"after (limit {limit:g} s); a new gRPC call then "
            + ("served" if served else "NOT served")
        )
        if held_first > cap:
            row.problems.append(f"{held_first} held, over the cap of {cap}")
        if held:
            row.problems.append(f"{held} still open after {closed_after:.0f} s")
        if not served:
            row.problems.append("a new gRPC call was not served afterwards")
    return row


def _unimplemented_row(server: RunningServer, target: str, side: list[tuple[bytes, str]]) -> Row:
    """Row 7: UNIMPLEMENTED_CALLS calls of the methods the service does not serve, one after
    another; the server log's growth (side requests after: each writes an access line)."""
    methods = unserved_methods()
    row = Row("7", f"{UNIMPLEMENTED_CALLS} calls of the {len(methods)} unserved methods", "gRPC")
    with _recorded(row):
        log_before = server.log_path.stat().st_size
        row.rss_before = server.rss() / 2**20
        _reset_peak_rss(server.pid)
        codes: Counter[str] = Counter()
        started = time.perf_counter()
        with grpc.insecure_channel(target) as channel:
            for index in range(UNIMPLEMENTED_CALLS):
                codes[call_method(channel, methods[index % len(methods)]).name] += 1
        seconds = time.perf_counter() - started
        time.sleep(1.0)  # the server's output is unbuffered: a moment for a last line
        growth = server.log_path.stat().st_size - log_before
        row.peak_rss = _peak_rss_mib(server.pid)
        with SideLoad(server.url, side, count=SIDE_AFTER) as load:
            pass
        row.side, row.side_worst, row.side_after = load.statuses, load.worst, True
        row.many = f"{UNIMPLEMENTED_CALLS} in turn, {seconds:.1f} s, {_counts(codes)}"
        row.seen = f"server log {growth:+,} bytes"
        if set(codes) != {"UNIMPLEMENTED"}:
            row.problems.append(f"answers {_counts(codes)}, not UNIMPLEMENTED")
        if growth > LOG_GROWTH_BOUND_BYTES:
            row.problems.append(f"the log grew by {growth:,} bytes")
    return row


# The hostile files: each planted in a copy of the models directory (or beside it), given the
# newest version's directory and the work directory; each returns its size and the settings.


def _config_file(work: Path, text: str) -> tuple[int, dict[str, str]]:
    path = work / "models.config"
    path.write_text(text)
    return path.stat().st_size, {"DIGITS_VERSION_CONFIG": str(path)}


def _plant_nested_config(newest: Path, work: Path) -> tuple[int, dict[str, str]]:
    return _config_file(work, deeply_nested_config(3_000))


def _plant_huge_number(newest: Path, work: Path) -> tuple[int, dict[str, str]]:
    return _config_file(work, huge_number_config(5_000))


def _plant_fifo(newest: Path, work: Path) -> tuple[int, dict[str, str]]:
    path = work / "models.config"
    os.mkfifo(path)
    return 0, {"DIGITS_VERSION_CONFIG": str(path)}


def _plant_likeness(newest: Path, work: Path) -> tuple[int, dict[str, str]]:
    path = newest / "likeness.npz"
    oversized_likeness_basis(path, 20_000)
    return path.stat().st_size, {}


def _plant_reader(newest: Path, work: Path) -> tuple[int, dict[str, str]]:
    path = newest / "reader.json"
    path.write_bytes(deeply_nested_json(100_000))
    return path.stat().st_size, {}


@dataclass(frozen=True)
class HostileFile:
    """A file that once stopped the poller, failed a version or cost memory at load."""

    row: str
    kind: str
    slug: str
    plant: Callable[[Path, Path], tuple[int, dict[str, str]]]
    shows: str
    """What /model must show: in the policy's error (models.config), else in a calibration note."""
    policy: bool


HOSTILE_FILES: Final = (
    HostileFile(
        "5",
        "models.config nested 3,000 deep",
        "nested",
        _plant_nested_config,
        "nested more than 32 deep",
        policy=True,
    ),
    HostileFile(
        "5",
        "models.config holding a number of 5,000 digits",
        "number",
        _plant_huge_number,
        "a number of more than 20 digits",
        policy=True,
    ),
    HostileFile(
        "6",
        "models.config replaced by a FIFO",
        "fifo",
        _plant_fifo,
        "a FIFO, not a regular file",
        policy=True,
    ),
    HostileFile(
        "8",
        "likeness.npz of 20,000 components per class",
        "likeness",
        _plant_likeness,
        "likeness check off",
        policy=False,
    ),
    HostileFile(
        "9",
        "reader.json nested 100,000 deep",
        "reader",
        _plant_reader,
        "unreadable (nested too deeply)",
        policy=False,
    ),
)


def _model_info(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/model", timeout=60)
    response.raise_for_status()
    info: dict[str, Any] = response.json()
    return info


def _file_row(
    models_dir: Path, log_dir: Path, hostile: HostileFile, side: list[tuple[bytes, str]]
) -> Row:
    """A fresh server on a copy of ``models_dir`` with the hostile file planted: whether it
    becomes ready, what /model says, its peak RSS from the start, /predict meanwhile."""
    row = Row(
        hostile.row,
        hostile.kind,
        "DIGITS_VERSION_CONFIG" if hostile.policy else "newest version",
    )
    with _recorded(row), tempfile.TemporaryDirectory(prefix="bench-hostile-file-") as work_dir:
        work = Path(work_dir)
        models = work / "models"
        shutil.copytree(models_dir, models)
        newest = max(int(entry.name) for entry in models.iterdir() if entry.name.isdigit())
        size, env = hostile.plant(models / str(newest), work)
        if size:
            row.attack = f"{hostile.kind} ({_size(size)})"
        log = log_dir / f"hostile-file-{hostile.slug}.log"
        try:
            server = RunningServer.start(models, log, env=env)
        except ServerError:
            row.once = "never ready"
            raise
        try:
            row.once = f"ready in {server.ready_seconds:.0f} s"
            first = _model_info(server.url)
            with SideLoad(server.url, side) as load:
                time.sleep(FILE_WATCH_SECONDS)
            later = _model_info(server.url)
            row.peak_rss = _peak_rss_mib(server.pid)
            row.side, row.side_worst = load.statuses, load.worst
        finally:
            server.stop()
        if hostile.policy:
            said = [later["policy"]["error"] or ""]
            where = "policy error"
        else:
            said = list((later.get("reader_calibration") or {}).get("notes") or [])
            where = "calibration note"
        shown = next((s for s in said if hostile.shows in s), None)
        polled = first["last_checked"] != later["last_checked"]
        row.seen = (
            f"/model {where}: {_quoted(shown or (said[0] if said else 'none'))}; "
            f"version {later['version']} served; polls {'went on' if polled else 'STOPPED'}"
        )
        if shown is None:
            row.problems.append(f"/model's {where} does not say {hostile.shows!r}")
        if later["version"] != newest:
            row.problems.append(f"version {later['version']} served, not {newest}")
        if not polled:
            row.problems.append("/model's last_checked did not move")
    return row


def _quoted(text: str, limit: int = 90) -> str:
    text = text.replace("|", "/")
    return f"“{text if len(text) <= limit else text[: limit - 1] + '…'}”"


@dataclass
class HostileWorkRun:
    """The rows of one run and the machine it ran on."""

    machine: list[str]
    rows: list[Row]
    seconds: float = 0.0


def run_hostile_work(models_dir: Path, log_dir: Path) -> HostileWorkRun:
    """Every hostile-work row: the request-shaped attacks, the idle connections and the
    unimplemented calls on one fresh server (gRPC on), then a fresh server per hostile file."""
    run = HostileWorkRun(machine_lines(), [])
    started = time.perf_counter()
    images, _ = digit_images(16)
    side = [multipart("file", [png(image)]) for image in images]
    grpc_port = free_port()
    target = f"{HOST}:{grpc_port}"
    server = RunningServer.start(
        models_dir, log_dir / "hostile-work.log", env={"DIGITS_GRPC_PORT": str(grpc_port)}
    )
    try:
        for attack in hostile_work_attacks() + strip_and_infer_attacks():
            run.rows.append(_upload_row(server, attack, side))
        run.rows.append(_grpc_infer_row(server, target, side))
        run.rows.append(_unimplemented_row(server, target, side))
        run.rows.append(_idle_row(server, grpc_port, side, http2=False))
        run.rows.append(_idle_row(server, grpc_port, side, http2=True))
    finally:
        server.stop()
    for hostile in HOSTILE_FILES:
        run.rows.append(_file_row(models_dir, log_dir, hostile, side))
    # The decode rows first, then rows 1-9 in their order (row 7 ran before row 4).
    run.rows.sort(key=lambda r: (not r.row.startswith("D"), r.row))
    run.seconds = time.perf_counter() - started
    return run


def print_hostile_work(run: HostileWorkRun) -> bool:
    """The hostile-work table; whether every row met the bound."""
    print(
        f"## Hostile work (peak RSS of the worker, MiB; {run.seconds:.0f} s; rows D*: the costly "
        "decodes found earlier, 1-9: the attack classes bounded since)\n"
    )
    print(*run.machine, sep="\n")
    print(
        f"\n| row | attack | sent to | once: answer, time | {CONCURRENCY} clients (or as said): "
        f"sent, time, answers | seen | RSS before → peak | other /predict: 200s of sent, worst |"
    )
    print("| --- | --- | --- | --- | --- | --- | ---: | --- |")
    for r in run.rows:
        before = f"{r.rss_before:.0f}" if r.rss_before is not None else "start"
        side = f"{r.side[200]} of {sum(r.side.values())}"
        if set(r.side) - {200}:
            side += f" ({_counts(r.side)})"
        side += f", {r.side_worst:.2f} s" + (" (after)" if r.side_after else "")
        print(
            f"| {r.row} | {r.attack} | {r.target} | {r.once} | {r.many} | {r.seen} "
            f"| {before} → {r.peak_rss:.0f} | {side} |"
        )
    print()
    for r in run.rows:
        for problem in r.problems:
            print(f"- row {r.row} ({r.attack}): {problem}")
    decode_rows = [r for r in run.rows if r.row.startswith("D")]
    under = all(r.peak_rss < HOSTILE_WORK_BOUND_MIB for r in decode_rows)
    print(
        f"- the decode rows under their own {HOSTILE_WORK_BOUND_MIB:.0f} MiB bound too: "
        f"{'yes' if under else 'no'}"
    )
    met = all(r.met for r in run.rows)
    print(
        f"- every row answered as expected (503 = deadline_exceeded, allowed only where work "
        f"queues past the request deadline), the worker's peak RSS < {TABLE_BOUND_MIB:.0f} MiB "
        f"(1.5 GiB), every other /predict answered 200: {'met' if met else 'NOT met'}"
    )
    return met


def main(argv: list[str] | None = None) -> int:
    """Run the memory benchmark alone and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models" / "mnist")
    parser.add_argument("--log-dir", type=Path, default=REPO / "artifacts" / "bench")
    parser.add_argument(
        "--hostile-work",
        action="store_true",
        help="run instead every hostile-work attack (the costly decodes, rows 1-9: strips, "
        "repeated outputs over REST and gRPC, idle gRPC connections, hostile models.config, "
        "likeness.npz and reader.json, unimplemented gRPC methods) and print one table",
    )
    args = parser.parse_args(argv)
    if args.hostile_work:
        return (
            0
            if print_hostile_work(run_hostile_work(args.models_dir.resolve(), args.log_dir))
            else 1
        )
    result = run_memory_benchmark(args.models_dir.resolve(), args.log_dir)
    result.print_table()
    print()
    for name, value, met in result.checks():
        print(f"- {name}: {value} ({'met' if met else 'NOT met'})")
    return 0 if all(met for _, _, met in result.checks()) else 1


if __name__ == "__main__":
    sys.exit(main())
