"""The review queue under the real server: a database that goes away never fails a reading, a
restart loses nothing a client was told was queued, and two servers on one PostgreSQL never hand
out one item twice.

Every /predict reading is stored here (``DIGITS_REVIEW_QUEUE_PREDICT`` for the flagged ones,
an audit share of 1 for the rest), so each answer says where its reading went.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from harness import postgres
from harness.servers import RunningServer, free_port
from tests.conftest import postgres_server
from tests.ops.conftest import ServedModel, ServerFactory

pytestmark = pytest.mark.slow

STORE_EVERYTHING = {"DIGITS_REVIEW_QUEUE_PREDICT": "true", "DIGITS_REVIEW_AUDIT_SHARE": "1"}
TIMEOUT = 30.0  # a bound on one request on a busy machine, not a speed check


def read(client: httpx.Client, server: RunningServer, png: bytes) -> dict[str, Any]:
    response = client.post(f"{server.url}/predict", files={"file": ("d.png", png, "image/png")})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def metric(server: RunningServer, name: str, **labels: str) -> float | None:
    text_ = httpx.get(f"{server.url}/metrics", headers={"Accept": "text/plain"}, timeout=TIMEOUT)
    for family in text_string_to_metric_families(text_.text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def test_a_database_that_goes_away_never_fails_a_reading(
    start_server: ServerFactory, models_dir: Path, served_model: ServedModel
) -> None:
    with postgres.fresh_database(postgres_server(), "digits_gone") as url:
        server = start_server(models_dir, {**STORE_EVERYTHING, "DIGITS_REVIEW_DATABASE_URL": url})
        with httpx.Client(timeout=TIMEOUT) as client:
            before = [read(client, server, png)["queue"] for png in served_model.pngs[:4]]
            assert set(before) <= {"queued", "audit"}, before

            admin = create_engine(postgres_server(), isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                name = url.rsplit("/", 1)[1]
                connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            admin.dispose()

            after = [read(client, server, png) for png in served_model.pngs[:10]]
            assert [a["queue"] for a in after] == ["not_queued"] * 10
            assert [a["digit"] for a in after] == served_model.digits[:10]
            assert all(a["review_id"] is None for a in after)
            assert client.get(f"{server.url}/health/ready").status_code == 200
            stats = client.get(f"{server.url}/reviews/stats")
            assert stats.status_code == 503
            assert stats.json()["error"]["code"] == "review_queue_unavailable"
    assert metric(server, "digits_review_not_queued_total", reason="unavailable") == 10
    log = server.log()
    assert "answered without being queued for review" in log
    assert "\\x89PNG" not in log  # never the image


#: A short retry interval, so a lost database is checked again within the test's patience.
RETRY = {"DIGITS_REVIEW_RETRY_SECONDS": "0.5"}
RECOVERY_SECONDS = 30.0  # sixty retry intervals: a bound on a busy machine, not a speed check


def read_until_queued(
    client: httpx.Client, server: RunningServer, served_model: ServedModel
) -> list[dict[str, Any]]:
    """Readings until one is stored again (each answered 200); all of them."""
    answers: list[dict[str, Any]] = []
    deadline = time.monotonic() + RECOVERY_SECONDS
    while True:
        answer = read(client, server, served_model.pngs[len(answers) % len(served_model.pngs)])
        answers.append(answer)
        assert answer["digit"] == served_model.digits[(len(answers) - 1) % len(served_model.pngs)]
        if answer["queue"] != "not_queued":
            return answers
        assert time.monotonic() < deadline, f"the queue never came back:\n{server.tail()}"
        time.sleep(0.1)


def assert_recovered(
    client: httpx.Client, server: RunningServer, answers: list[dict[str, Any]]
) -> None:
    """Every reading said stored since the loss is in the queue, and the reviewers' routes work."""
    stored = [a["review_id"] for a in answers if a["queue"] != "not_queued"]
    assert stored, answers
    for review_id in stored:
        assert client.get(f"{server.url}/reviews/{review_id}").status_code == 200, review_id
    stats = client.get(f"{server.url}/reviews/stats")
    assert stats.status_code == 200, stats.text
    assert stats.json()["waiting"] == len(stored)
    claimed = client.post(f"{server.url}/reviews/claim", json={"reviewer": "after"})
    assert claimed.status_code == 200, claimed.text
    assert claimed.json()["review_id"] == stored[0]
    queue_info = client.get(f"{server.url}/model").json()["review_queue"]
    assert queue_info["available"] is True, queue_info


def test_a_sqlite_database_lost_while_serving_comes_back_without_a_restart(
    start_server: ServerFactory, models_dir: Path, served_model: ServedModel, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server = start_server(models_dir, {**STORE_EVERYTHING, **RETRY, "DIGITS_DATA_DIR": str(data)})
    database = data / "reviews.sqlite3"
    with httpx.Client(timeout=TIMEOUT) as client:
        before = read(client, server, served_model.pngs[0])
        assert before["queue"] in {"queued", "audit"}, before

        # The file deleted under the running service (its open connections keep the old one).
        database.unlink()
        answers = read_until_queued(client, server, served_model)
        assert database.exists()
        assert_recovered(client, server, answers)
        gone = client.get(f"{server.url}/reviews/{before['review_id']}")
        assert gone.status_code == 404, gone.text

        # Its tables dropped by hand: the next write fails, the check applies the migrations.
        with sqlite3.connect(database) as connection:
            connection.execute("DROP TABLE review_items")
            connection.execute("DROP TABLE alembic_version")
        connection.close()
        answers = read_until_queued(client, server, served_model)
        assert answers[0]["queue"] == "not_queued"
        assert_recovered(client, server, answers)
    log = server.log()
    assert log.count("was deleted or replaced while the service ran") == 1, log
    assert log.count("had lost its schema (revision none)") == 2, log
    assert "\\x89PNG" not in log  # never the image
    assert "INSERT" not in log  # never the statement or its parameters


def test_a_postgresql_database_lost_while_serving_comes_back_without_a_restart(
    start_server: ServerFactory, models_dir: Path, served_model: ServedModel
) -> None:
    admin_url = postgres_server()
    with postgres.fresh_database(admin_url, "digits_lost") as url:
        name = url.rsplit("/", 1)[1]
        server = start_server(
            models_dir, {**STORE_EVERYTHING, **RETRY, "DIGITS_REVIEW_DATABASE_URL": url}
        )
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with httpx.Client(timeout=TIMEOUT) as client:
            assert read(client, server, served_model.pngs[0])["queue"] in {"queued", "audit"}

            # Dropped: readings go on, not queued; the check says why in /model.
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            deadline = time.monotonic() + RECOVERY_SECONDS
            while True:
                answer = read(client, server, served_model.pngs[1])
                assert (answer["queue"], answer["review_id"]) == ("not_queued", None)
                queue_info = client.get(f"{server.url}/model").json()["review_queue"]
                assert queue_info["available"] is False, queue_info
                if "OperationalError" in queue_info["reason"]:
                    break
                assert time.monotonic() < deadline, queue_info
                time.sleep(0.1)
            refused = client.get(f"{server.url}/reviews/stats")
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "review_queue_unavailable"
            time.sleep(1.5)  # three retry intervals: a state said once is not said again

            # Recreated empty: the check migrates it and readings are queued again.
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
            answers = read_until_queued(client, server, served_model)
            assert_recovered(client, server, answers)

            # Its tables dropped while the service holds connections to it.
            engine = create_engine(url, isolation_level="AUTOCOMMIT")
            with engine.connect() as connection:
                connection.execute(text("DROP TABLE review_items, alembic_version"))
            engine.dispose()
            answers = read_until_queued(client, server, served_model)
            assert answers[0]["queue"] == "not_queued"
            assert_recovered(client, server, answers)
        admin.dispose()
    log = server.log()
    assert log.count("failed its check") == 1, log
    assert log.count("had lost its schema (revision none)") == 2, log
    assert "\\x89PNG" not in log
    assert "INSERT" not in log


def test_a_database_that_is_down_at_the_start_never_stops_the_service(
    start_server: ServerFactory, models_dir: Path, served_model: ServedModel
) -> None:
    closed = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/nowhere"
    server = start_server(models_dir, {**STORE_EVERYTHING, "DIGITS_REVIEW_DATABASE_URL": closed})
    with httpx.Client(timeout=TIMEOUT) as client:
        answers = [read(client, server, png) for png in served_model.pngs[:5]]
        assert [a["queue"] for a in answers] == ["not_queued"] * 5
        assert client.get(f"{server.url}/health/ready").status_code == 200
        refused = client.get(f"{server.url}/reviews")
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) >= 1
        model = client.get(f"{server.url}/model").json()
        assert model["review_queue"]["available"] is False
    assert metric(server, "digits_review_not_queued_total", reason="unavailable") == 5
    assert metric(server, "digits_review_queue_available") == 0
    assert "not available (attempt 1)" in server.log()


def test_a_restart_loses_nothing_acknowledged(
    start_server: ServerFactory, models_dir: Path, served_model: ServedModel, tmp_path: Path
) -> None:
    # SQLite in one data directory, for the server and the one that replaces it.
    env = {**STORE_EVERYTHING, "DIGITS_DATA_DIR": str(tmp_path / "data")}
    server = start_server(models_dir, env)
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def keep_reading(worker: int) -> None:
        with httpx.Client(timeout=TIMEOUT) as client:
            index = worker
            while not stop.is_set():
                png = served_model.pngs[index % len(served_model.pngs)]
                index += 4
                try:
                    response = client.post(
                        f"{server.url}/predict", files={"file": ("d.png", png, "image/png")}
                    )
                except httpx.TransportError:
                    return  # the server is going away
                if response.status_code == 200 and response.json()["review_id"]:
                    with lock:
                        acknowledged.append(response.json()["review_id"])

    threads = [threading.Thread(target=keep_reading, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 40:
        assert time.monotonic() < deadline, server.tail()
        time.sleep(0.05)
    # SIGTERM while readings are in flight.
    assert server.stop() is not None
    stop.set()
    for thread in threads:
        thread.join(TIMEOUT)
    assert len(acknowledged) >= 40

    again = start_server(models_dir, env)
    with httpx.Client(timeout=TIMEOUT) as client:
        missing = [
            review_id
            for review_id in acknowledged
            if client.get(f"{again.url}/reviews/{review_id}").status_code != 200
        ]
        assert missing == []
        stats = client.get(f"{again.url}/reviews/stats").json()
    assert stats["waiting"] >= len(acknowledged)


def test_two_servers_on_one_postgresql_never_hand_out_an_item_twice(
    start_server: ServerFactory, models_dir: Path, served_model: ServedModel
) -> None:
    with postgres.fresh_database(postgres_server(), "digits_shared") as url:
        env = {**STORE_EVERYTHING, "DIGITS_REVIEW_DATABASE_URL": url}
        # Three worker processes in all: two under one launcher, one alone.
        first = start_server(models_dir, {**env, "WEB_CONCURRENCY": "2"})
        second = start_server(models_dir, env)
        servers = [first, second]
        stored: list[str] = []
        with httpx.Client(timeout=TIMEOUT) as client:
            for index, png in enumerate(served_model.pngs[:48]):
                answer = read(client, servers[index % 2], png)
                assert answer["queue"] in {"queued", "audit"}, answer
                stored.append(answer["review_id"])

        def claim_all(worker: int) -> list[str]:
            taken = []
            with httpx.Client(timeout=TIMEOUT) as client:
                turn = worker
                while True:
                    server = servers[turn % 2]
                    turn += 1
                    response = client.post(
                        f"{server.url}/reviews/claim", json={"reviewer": f"r{worker}"}
                    )
                    if response.status_code == 204:
                        return taken
                    assert response.status_code == 200, response.text
                    taken.append(response.json()["review_id"])

        with ThreadPoolExecutor(6) as pool:
            claims = [review_id for taken in pool.map(claim_all, range(6)) for review_id in taken]
        twice = [review_id for review_id, count in Counter(claims).items() if count > 1]
        assert twice == []
        assert sorted(claims) == sorted(stored)

        # The queue's figures come from the shared database once per scrape, whichever worker
        # answers: never added up over the launcher's two workers.
        for _ in range(4):
            assert metric(first, "digits_review_queue_items", status="claimed") == len(stored)
        # The counters are the replica's: its two workers' readings added up.
        queued = sum(
            metric(first, "digits_review_queued_total", kind=kind) or 0.0
            for kind in ("flagged", "audit")
        )
        assert queued == len(stored) / 2
