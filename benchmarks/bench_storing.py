"""Storing benchmark: what the review queue costs ``POST /predict``, on SQLite and PostgreSQL.

The service stores a reading for review before it answers (app/api/review_intake.py: the writes
of concurrent requests share one transaction). This script starts the service as production
starts it (``python -m app.serve``, one worker, ``MALLOC_ARENA_MAX=2``, harness/servers.py), one
server per configuration, each with its own temporary ``DIGITS_DATA_DIR``:

* the queue off (``DIGITS_REVIEW_QUEUE=false``);
* SQLite (the default, in the data directory) with the default settings: the flagged
  ``/predict`` readings are not stored, a 2% audit sample of the others is;
* SQLite storing every reading: ``DIGITS_REVIEW_QUEUE_PREDICT=true`` stores the flagged ones
  and ``DIGITS_REVIEW_AUDIT_SHARE=1`` all the others, so every reading is written whatever the
  model makes of the digit;
* PostgreSQL (``DIGITS_REVIEW_DATABASE_URL``, a fresh database per server on the server given by
  ``--postgres-url`` or ``$DIGITS_TEST_POSTGRES_URL``) with the same two settings. Without a URL
  these rows are skipped, and the script says so.

``DIGITS_REVIEW_MAX_ITEMS`` is raised so that a long run never fills a queue (a full queue
answers without storing). wrk (benchmarks/bench_serving.py's helpers) posts one MNIST digit PNG
as the raw body of ``/predict`` at concurrency 1 and 16; at each concurrency the five servers'
cells are interleaved: a warm-up each, then ``--rounds`` rounds of ``--duration`` seconds taken
in turn; req/s and p99 are the medians of the rounds, the server's CPU time per request is summed
over them. With a PostgreSQL on this machine, the CPU time of the database's backends per request
is given too (the service's own CPU time does not hold it, whereas SQLite works in-process), and
at c16 how many requests a model call served.

At the end each store's items are counted in its database (``review_items``) beside what the
server answered and said it stored; for the "every reading" rows the counts must match, or the
script says so and exits 1.

Usage (from the repository root)::

    python -m benchmarks.bench_storing [--duration 3] [--warmup 2] [--rounds 3]
        [--only off,sqlite-audit,sqlite-every,pg-audit,pg-every] [--postgres-url URL]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from app.reviews.db import SQLITE_FILE, default_url, redacted
from app.reviews.tables import ReviewItem
from benchmarks.bench_serving import (
    WRK_SCRIPT,
    Body,
    Cell,
    Run,
    find_wrk,
    inference_counts,
    measure_group,
    newest_version,
    run_wrk,
)
from benchmarks.machine import machine_lines
from harness.bodies import digit_images, png
from harness.postgres import URL_ENV, fresh_database
from harness.servers import REPO, RunningServer, cpu_seconds

CONCURRENCIES: Final = (1, 16)
#: Every /predict reading stored: the flagged ones, and all the others as audit samples.
EVERY_READING: Final = {"DIGITS_REVIEW_QUEUE_PREDICT": "true", "DIGITS_REVIEW_AUDIT_SHARE": "1"}
#: Far above what a run sends: a full queue would answer without storing.
MAX_ITEMS: Final = "100000000"
LOOPBACK: Final = {"127.0.0.1", "localhost", "::1"}

Database = Literal["sqlite", "postgresql"]


@dataclass(frozen=True)
class Store:
    """One configuration of the review queue, served by a server of its own."""

    key: str
    name: str
    database: Database | None
    """None: the queue is off."""
    every: bool
    """Every reading is stored (else the defaults: a 2% audit sample of the unflagged ones)."""

    def env(self, data_dir: Path, database_url: str | None = None) -> dict[str, str]:
        """The ``DIGITS_*`` settings of its server (``database_url``: PostgreSQL's)."""
        env = {"DIGITS_DATA_DIR": str(data_dir)}
        if self.database is None:
            env["DIGITS_REVIEW_QUEUE"] = "false"
            return env
        env["DIGITS_REVIEW_MAX_ITEMS"] = MAX_ITEMS
        if self.database == "postgresql":
            if database_url is None:
                raise ValueError(f"{self.name}: a PostgreSQL URL is needed")
            env["DIGITS_REVIEW_DATABASE_URL"] = database_url
        if self.every:
            env.update(EVERY_READING)
        return env


STORES: Final = (
    Store("off", "queue off", None, every=False),
    Store("sqlite-audit", "SQLite, 2% audit (default)", "sqlite", every=False),
    Store("sqlite-every", "SQLite, every reading", "sqlite", every=True),
    Store("pg-audit", "PostgreSQL, 2% audit", "postgresql", every=False),
    Store("pg-every", "PostgreSQL, every reading", "postgresql", every=True),
)


@dataclass(frozen=True)
class Backends:
    """The CPU time of the backend processes of one database of a PostgreSQL on this machine."""

    admin: Engine
    database: str

    def cpu_seconds(self) -> float:
        """Their CPU time so far (those connected now)."""
        with self.admin.connect() as connection:
            pids = (
                connection.execute(
                    text("SELECT pid FROM pg_stat_activity WHERE datname = :name"),
                    {"name": self.database},
                )
                .scalars()
                .all()
            )
        total = 0.0
        for pid in pids:
            with contextlib.suppress(OSError):  # ended in between
                total += cpu_seconds(pid)
        return total


@dataclass
class Served:
    """A store's server, where its items are, and what was sent to it."""

    store: Store
    server: RunningServer
    data_dir: Path
    database_url: str | None
    """Where its items are (None: the queue is off)."""
    backends: Backends | None = None
    """The PostgreSQL backends serving its database, when they run on this machine."""
    completed: int = 0
    """Requests answered to the client (wrk's count, warm-ups included, and the checks)."""
    errors: int = 0
    cells: dict[int, Cell] = field(default_factory=dict)
    backend_ms: dict[int, float] = field(default_factory=dict)
    """Per concurrency: CPU ms of its PostgreSQL backends per request answered."""


def local_backends(admin: Engine, database_url: str) -> Backends | None:
    """The database's backends, when its server's processes can be read here (else None)."""
    if make_url(database_url).host not in LOOPBACK:
        return None
    with admin.connect() as connection:
        pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None  # another machine's, or another PID namespace's
    if not command.startswith(b"postgres"):
        return None
    return Backends(admin, str(make_url(database_url).database))


def stored_items(database_url: str) -> dict[str, int]:
    """Items in a review queue's database, by kind."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(ReviewItem.kind, func.count()).group_by(ReviewItem.kind)
            ).all()
    finally:
        engine.dispose()
    return {str(kind): int(count) for kind, count in rows}


def queue_counters(server: RunningServer) -> tuple[dict[str, int], dict[str, int]]:
    """What the server says it stored (by kind) and did not store (by reason), from /metrics."""
    answer = httpx.get(f"{server.url}/metrics", headers={"Accept": "text/plain"}, timeout=30)
    answer.raise_for_status()
    queued: dict[str, int] = {}
    not_queued: dict[str, int] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.name == "digits_review_queued_total":
                queued[sample.labels["kind"]] = int(sample.value)
            elif sample.name == "digits_review_not_queued_total":
                not_queued[sample.labels["reason"]] = int(sample.value)
    return queued, not_queued


def answered(server: RunningServer) -> int:
    """/predict readings the server has made so far (its model's requests)."""
    counts = inference_counts(server)
    assert counts is not None, "one worker serves the /metrics figures"
    return counts[1]


def check_store(served: Served, body: bytes) -> None:
    """One reading through the server before the clock runs: answered, and stored as set."""
    response = httpx.post(
        f"{served.server.url}/predict",
        content=body,
        headers={"Content-Type": "image/png"},
        timeout=30,
    )
    assert response.status_code == 200, f"{served.store.name}: {response.text}"
    served.completed += 1
    queue = response.json()["queue"]
    store = served.store
    allowed: set[str | None] = {None, "audit"}  # the 2% audit sample, or not
    if store.database is None:
        allowed = {None}
    elif store.every:
        allowed = {"queued", "audit"}
    assert queue in allowed, f"{store.name}: the answer's queue is {queue!r}, not in {allowed}"
    if store.every:
        assert served.database_url is not None
        held = sum(stored_items(served.database_url).values())
        assert held == 1, f"{store.name}: {held} items stored after one reading"


def postgres_admin(url: str) -> Engine:
    """An engine on the PostgreSQL server, or exit saying why it cannot be used."""
    admin = create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        first = str(exc).strip().splitlines()[0]
        sys.exit(f"PostgreSQL at {redacted(url)} is not answering: {first}")
    return admin


def postgres_line(admin: Engine) -> str:
    """The PostgreSQL server's version and durability settings, as a markdown list item."""
    with admin.connect() as connection:
        version, fsync, synchronous = (
            connection.execute(text(f"SHOW {name}")).scalar_one()
            for name in ("server_version", "fsync", "synchronous_commit")
        )
    where = f"{admin.url.host}:{admin.url.port or 5432}"
    return (
        f"- PostgreSQL {version} at {where} (fsync {fsync}, synchronous_commit {synchronous}); "
        "a fresh database per server"
    )


def sample_items(names: Mapping[str, int]) -> str:
    """``12 (flagged 2, audit 10)``."""
    total = sum(names.values())
    parts = ", ".join(f"{kind} {count:,}" for kind, count in sorted(names.items()) if count)
    return f"{total:,}" + (f" ({parts})" if parts else "")


def verdict(
    served: Served,
    stored: dict[str, int] | None,
    final: tuple[int, Mapping[str, int], Mapping[str, int]],
) -> tuple[str, bool]:
    """Whether a store holds what its server answered and said it stored; (text, good)."""
    readings, queued, not_queued = final
    store = served.store
    if stored is None:
        no_file = not (served.data_dir / SQLITE_FILE).exists()
        return ("no database opened" if no_file else "a database was opened", no_file)
    problems = []
    held = sum(stored.values())
    if held != sum(queued.values()):
        problems.append(f"the server says it stored {sum(queued.values()):,}")
    if sum(not_queued.values()):
        problems.append(f"{sum(not_queued.values()):,} not stored ({dict(not_queued)})")
    if readings < served.completed:
        problems.append(f"the server made {readings:,} readings for {served.completed:,} answers")
    if store.every and held != readings:
        problems.append(f"{held:,} stored for {readings:,} readings")
    if problems:
        return "MISMATCH: " + "; ".join(problems), False
    return ("every reading stored" if store.every else "as the server says"), True


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models" / "mnist")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per round")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per cell")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated configurations (" + ",".join(s.key for s in STORES) + "); "
        "default all",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(URL_ENV),
        help=f"SQLAlchemy URL of a PostgreSQL server to make databases on (default ${URL_ENV})",
    )
    parser.add_argument("--log-dir", type=Path, default=REPO / "artifacts" / "bench")
    args = parser.parse_args(argv)
    keys = [key for key in args.only.split(",") if key] or [s.key for s in STORES]
    unknown = set(keys) - {s.key for s in STORES}
    if unknown:
        parser.error(f"no configuration {', '.join(sorted(unknown))}")
    stores = [s for s in STORES if s.key in keys]
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--rounds must be at least 1, --duration above 0, --warmup 0 or more")

    wrk = find_wrk()
    models_dir = args.models_dir.resolve()
    version = newest_version(models_dir)
    if version is None:
        sys.exit(f"No model version under {models_dir}: train one first (make train).")
    images, source = digit_images(1)
    body = png(images[0])
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    load_start = os.getloadavg()

    print("# Review queue storing benchmark\n")
    print(*machine_lines(("sqlalchemy", "psycopg")), sep="\n")
    print(f"- SQLite {sqlite3.sqlite_version} (the service's default, WAL, synchronous NORMAL)")
    admin: Engine | None = None
    if any(s.database == "postgresql" for s in stores):
        if args.postgres_url:
            admin = postgres_admin(args.postgres_url)
            print(postgres_line(admin))
        else:
            stores = [s for s in stores if s.database != "postgresql"]
            print(
                f"- PostgreSQL: SKIPPED, no server given (--postgres-url or ${URL_ENV}; "
                "scripts/start-postgres.sh starts a throw-away one)"
            )
    if not stores:
        return 0
    print(f"- Load generator: {wrk_version.strip()} (1 thread), script {WRK_SCRIPT.name}")
    print(
        "- Service: `python -m app.serve`, 1 worker, MALLOC_ARENA_MAX=2, a temporary "
        f"DIGITS_DATA_DIR each, DIGITS_REVIEW_MAX_ITEMS={int(MAX_ITEMS):,}; model "
        f"{models_dir}/{version}"
    )
    print(f"- Body: one 28×28 PNG ({source}), {len(body)} bytes, as the raw body of /predict")
    print(
        f"- Each cell: {args.warmup:g} s warm-up, then {args.rounds} rounds of "
        f"{max(1, round(args.duration))} s in turn with the other configurations; req/s and p99 "
        "are medians over the rounds\n"
    )
    sys.stdout.flush()

    served: list[Served] = []
    final: dict[str, tuple[int, dict[str, int], dict[str, int]]] = {}
    stored: dict[str, dict[str, int] | None] = {}
    # The servers stop and the databases are dropped before the data directories go.
    with tempfile.TemporaryDirectory(prefix="bench-storing-") as tmp, ExitStack() as stack:
        body_file = Path(tmp) / "digit.png"
        body_file.write_bytes(body)
        wrk_body = Body(body_file, "image/png")
        for store in stores:
            data_dir = Path(tmp) / store.key
            data_dir.mkdir()
            database_url: str | None = None
            backends: Backends | None = None
            if store.database == "sqlite":
                database_url = default_url(data_dir)
            elif store.database == "postgresql":
                assert admin is not None
                assert args.postgres_url
                database_url = stack.enter_context(
                    fresh_database(args.postgres_url, prefix="bench_storing")
                )
                backends = local_backends(admin, database_url)
            server = RunningServer.start(
                models_dir,
                args.log_dir / f"storing-{store.key}.log",
                env=store.env(data_dir, database_url),
            )
            stack.callback(server.stop)
            served.append(Served(store, server, data_dir, database_url, backends))
            check_store(served[-1], body)

        for concurrency in CONCURRENCIES:
            runs = [Run(s.store.key, s.server, "/predict", wrk_body, concurrency) for s in served]
            for one in served:
                if args.warmup > 0:
                    warm = run_wrk(wrk, one.server, "/predict", wrk_body, concurrency, args.warmup)
                    one.completed += warm.requests
                    one.errors += warm.errors
            before = {
                s.store.key: (s.backends.cpu_seconds(), answered(s.server))
                for s in served
                if s.backends is not None
            }
            cells = measure_group(wrk, runs, 0, args.duration * args.rounds, args.rounds)
            for one in served:
                cell = cells[one.store.key]
                one.cells[concurrency] = cell
                one.completed += cell.requests
                one.errors += cell.errors
                if one.backends is not None:
                    cpu, readings = before[one.store.key]
                    spent = one.backends.cpu_seconds() - cpu
                    one.backend_ms[concurrency] = (
                        1000 * spent / max(answered(one.server) - readings, 1)
                    )

        time.sleep(1.0)  # the last writes of requests wrk left in flight
        for one in served:
            queued, not_queued = queue_counters(one.server)
            final[one.store.key] = (answered(one.server), queued, not_queued)
            url = one.database_url
            stored[one.store.key] = stored_items(url) if url is not None else None
            one.server.stop()
    if admin is not None:
        admin.dispose()

    off = next((s for s in served if s.store.database is None), None)
    print("## /predict, one digit as the body, one worker\n")
    print(
        "| configuration | c1 req/s (p99 ms) | c16 req/s (p99 ms) | ÷ queue off, c1 / c16 "
        "| server CPU ms/request, c1 / c16 | PostgreSQL backends CPU ms/request, c1 / c16 "
        "| c16 requests per model call | errors |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for one in served:
        c1, c16 = (one.cells[c] for c in CONCURRENCIES)
        if off is not None and one is not off:
            ratio = " / ".join(f"{one.cells[c].rps / off.cells[c].rps:.2f}" for c in CONCURRENCIES)
        else:
            ratio = ""
        backend = (
            " / ".join(f"{one.backend_ms[c]:.3f}" for c in CONCURRENCIES)
            if one.backend_ms
            else ("not on this machine" if one.store.database == "postgresql" else "")
        )
        print(
            f"| {one.store.name} | {c1.rps:,.0f} ({c1.p99_ms:.2f}) | {c16.rps:,.0f} "
            f"({c16.p99_ms:.2f}) | {ratio} | {c1.cpu_ms_per_request:.3f} / "
            f"{c16.cpu_ms_per_request:.3f} | {backend} | {c16.requests_per_call or 0:.2f} "
            f"| {one.errors} |"
        )

    print("\n## What each store holds at the end\n")
    print(
        "| configuration | answers (wrk, warm-ups and checks included) | readings made (server) "
        "| items in the store | stored ÷ readings | check |"
    )
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    good = True
    for one in served:
        key = one.store.key
        readings = final[key][0]
        items = stored[key]
        text_, fine = verdict(one, items, final[key])
        good = good and fine and one.errors == 0
        held = sample_items(items) if items is not None else "no store"
        share = f"{sum(items.values()) / readings:.2%}" if items is not None and readings else ""
        print(
            f"| {one.store.name} | {one.completed:,} | {readings:,} | {held} | {share} | {text_} |"
        )
    start_text = ", ".join(f"{x:.2f}" for x in load_start)
    end_text = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nLoad average (1, 5, 15 min): {start_text} at the start, {end_text} at the end")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
