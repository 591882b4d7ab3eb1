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

``--hostile-work`` runs instead the attacks of issue 9 that once cost one request seconds to
minutes of CPU or gigabytes of memory (rows 1-4, full size): each is sent once alone (status
and time), then by 16 concurrent clients; the server's peak RSS (VmHWM, reset before each
attack through /proc/<pid>/clear_refs) is printed for each, against the 1 GiB bound.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import struct
import sys
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.attacks import (
    bar_png,
    blank_one_bit_png,
    long_stroke_png,
    progressive_jpeg_with_repeated_scan,
)
from harness.bodies import digit_images, multipart, png
from harness.servers import REPO, RunningServer

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


# --- hostile work (issue 9, rows 1-4) ---------------------------------------------------------

HOSTILE_WORK_BOUND_MIB = 1024.0
HOSTILE_WORK_REQUESTS = 64  # per attack, from CONCURRENCY clients


@dataclass(frozen=True)
class Attack:
    """One costly upload, the endpoint it is sent to and the status it must get."""

    row: str
    kind: str
    path: str
    data: bytes
    expected: int
    shed: bool = False
    """Whether 503 ``deadline_exceeded`` is a right answer too when many are sent at once: work
    that queues for the large-image threads past the request deadline is dropped."""


def hostile_work_attacks() -> list[Attack]:
    """The uploads of issue 9, rows 1-4, at their full size."""
    one_bit = blank_one_bit_png(5_000)
    return [
        Attack("1", "1×96,000 PNG, 32,000-px stroke", "/recognize", long_stroke_png(), 200),
        Attack("1", "1×96,000 PNG, 32,000-px stroke", "/predict", long_stroke_png(), 200),
        Attack("2", "20000×50 PNG, 4-px bar", "/recognize", bar_png(), 422),
        Attack(
            "3",
            "5000×5000 progressive JPEG, last scan ×1,000",
            "/predict",
            progressive_jpeg_with_repeated_scan(5_000, 1_000),
            422,
        ),
        # The most a JPEG may cost: as many scans as the default cap allows (blank: 422).
        Attack(
            "3",
            "5000×5000 progressive JPEG, 32 scans (the cap)",
            "/predict",
            progressive_jpeg_with_repeated_scan(5_000, 32 - 6),
            422,
            shed=True,
        ),
        Attack("4", "5000×5000 1-bit PNG", "/predict", one_bit, 200),
        Attack("4", "5000×5000 1-bit PNG", "/recognize", one_bit, 200),
    ]


@dataclass
class AttackResult:
    """What one attack cost the server."""

    attack: Attack
    alone_status: int = 0
    alone_seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    seconds: float = 0.0
    rss_before: float = 0.0
    peak_rss: float = 0.0


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def _reset_peak_rss(pid: int) -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+).
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def _send_attack(url: str, attack: Attack, count: int) -> Counter[int]:
    body, content_type = multipart("file", [attack.data])
    request = Request(attack.kind, attack.path, attack.expected, body, content_type)
    outcomes = await drive(url, [request], count)
    return Counter({got: n for (_, _, got), n in outcomes.items()})


def run_hostile_work(models_dir: Path, log_dir: Path) -> list[AttackResult]:
    """Start a fresh server and send each attack alone, then from CONCURRENCY clients."""
    results = [AttackResult(attack) for attack in hostile_work_attacks()]
    server = RunningServer.start(models_dir, log_dir / "hostile-work.log")
    try:
        for result in results:
            attack = result.attack
            body, content_type = multipart("file", [attack.data])
            with httpx.Client(base_url=server.url, timeout=600) as client:
                started = time.perf_counter()
                response = client.post(
                    attack.path, content=body, headers={"Content-Type": content_type}
                )
                result.alone_seconds = time.perf_counter() - started
                result.alone_status = response.status_code
            result.rss_before = server.rss_mib()
            _reset_peak_rss(server.pid)
            started = time.perf_counter()
            result.statuses = asyncio.run(_send_attack(server.url, attack, HOSTILE_WORK_REQUESTS))
            result.seconds = time.perf_counter() - started
            result.peak_rss = _peak_rss_mib(server.pid)
    finally:
        server.stop()
    return results


def print_hostile_work(results: list[AttackResult]) -> bool:
    """The table of the hostile-work attacks; whether every bound was met."""
    print("## Hostile work (issue 9 rows 1-4; RSS of the server process, MiB)\n")
    print(
        f"| row | upload | endpoint | alone: status, time | {CONCURRENCY} clients: requests, "
        "time, statuses | RSS before | peak RSS |"
    )
    print("| --- | --- | --- | --- | --- | ---: | ---: |")
    met = True
    for r in results:
        a = r.attack
        statuses = ", ".join(f"{s}×{n}" for s, n in sorted(r.statuses.items()))
        print(
            f"| {a.row} | {a.kind} ({len(a.data):,} bytes) | {a.path} "
            f"| {r.alone_status}, {r.alone_seconds:.2f} s "
            f"| {sum(r.statuses.values())}, {r.seconds:.1f} s, {statuses} "
            f"| {r.rss_before:.0f} | {r.peak_rss:.0f} |"
        )
        allowed = {a.expected, 503} if a.shed else {a.expected}
        met &= r.alone_status == a.expected and set(r.statuses) <= allowed
        met &= r.peak_rss < HOSTILE_WORK_BOUND_MIB
    print(
        f"\n- every answer as expected (503 = deadline_exceeded, allowed only where work queues "
        f"past the request deadline) and peak RSS < {HOSTILE_WORK_BOUND_MIB:.0f} MiB: "
        f"{'met' if met else 'NOT met'}"
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
        help="run only the costly uploads of issue 9 (rows 1-4) and print peak RSS for each",
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
