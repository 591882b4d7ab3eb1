"""Faults in the models directory, against the real server.

Missing or empty directory: the process is alive (liveness 200) but not ready (503 in the error
shape), and its log says why. A corrupt newest version: the previous version keeps serving and
``/model`` reports the failure. With polling on, a good version that appears later (installed
atomically: copied under a hidden name, then renamed) is picked up while requests keep flowing,
and not one of them fails.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from tests.ops.conftest import (
    ServedModel,
    ServerFactory,
    assert_error_shape,
    install_corrupt_version,
    install_version,
)

pytestmark = pytest.mark.slow

WAIT_SECONDS = 60.0  # bound on waiting for the poller to load a version, not a speed check


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_no_model_means_not_ready_but_alive_with_a_clear_log_line(
    start_server: ServerFactory, tmp_path: Path, state: str
) -> None:
    models_dir = tmp_path / "models"
    if state == "empty":
        models_dir.mkdir()
    server = start_server(models_dir, wait_for="live")

    with httpx.Client(base_url=server.url, timeout=10) as client:
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        assert_error_shape(ready.json(), "model_not_ready")
        assert str(models_dir) in ready.json()["error"]["message"]
        assert client.get("/health/live").status_code == 200
        predict = client.post("/predict", files={"file": ("d.png", b"\x89PNG", "image/png")})
        assert predict.status_code == 503
        assert_error_shape(predict.json(), "model_not_ready")
        assert client.get("/model").json()["ready"] is False

    log_lines = [line for line in server.log().splitlines() if "not ready" in line]
    assert any(str(models_dir.resolve()) in line for line in log_lines), server.tail()
    assert any("ERROR" in line for line in log_lines), log_lines


def test_corrupt_newest_version_is_not_served_and_the_previous_one_is(
    start_server: ServerFactory, models_dir: Path, served_model: ServedModel
) -> None:
    install_corrupt_version(models_dir, 2)
    server = start_server(models_dir)

    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.get("/health/ready").json()["model_version"] == 1
        model = client.get("/model").json()
        assert model["version"] == 1
        assert model["versions_on_disk"] == [2, 1]
        assert [f["version"] for f in model["failed_versions"]] == [2]
        assert model["failed_versions"][0]["reason"]
        answer = client.post(
            "/predict", files={"file": ("d.png", served_model.pngs[0], "image/png")}
        ).json()
        assert (answer["model_version"], answer["digit"]) == (1, served_model.digits[0])
    assert "model version 2 not served" in server.log(), server.tail()


def test_a_good_version_appearing_later_is_picked_up_while_requests_flow(
    start_server: ServerFactory, models_dir: Path, served_model: ServedModel
) -> None:
    install_corrupt_version(models_dir, 2)
    server = start_server(models_dir, {"DIGITS_MODEL_POLL_SECONDS": "0.2"})
    versions: list[int] = []
    failures: list[str] = []

    async def request_loop(stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            i = 0
            while not stop.is_set():
                index = i % len(served_model.pngs)
                i += 1
                try:
                    response = await client.post(
                        "/predict", files={"file": ("d.png", served_model.pngs[index], "image/png")}
                    )
                except httpx.TransportError as exc:
                    failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                    continue
                answer = response.json()
                versions.append(answer["model_version"])
                if answer["digit"] != served_model.digits[index]:
                    failures.append(f"image {index}: {answer}")

    async def scenario() -> None:
        stop = asyncio.Event()
        loop_task = asyncio.create_task(request_loop(stop))
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            while len(versions) < 20:
                await asyncio.sleep(0.02)
            # Installed while the request loop runs.
            await asyncio.to_thread(install_version, models_dir, served_model.version_dir, 3)
            deadline = time.monotonic() + WAIT_SECONDS
            while (await client.get("/model")).json()["version"] != 3:
                assert time.monotonic() < deadline, f"version 3 not picked up:\n{server.tail()}"
                await asyncio.sleep(0.1)
            served_before = len(versions)
            while len(versions) < served_before + 20:
                await asyncio.sleep(0.02)
        stop.set()
        await loop_task

    asyncio.run(scenario())

    assert failures == []
    assert set(versions) == {1, 3}, "the corrupt version 2 must never answer"
    # One client, one request at a time: once version 3 answers, version 1 never does again.
    first_new = versions.index(3)
    assert set(versions[first_new:]) == {3}
    assert "serving model version 3" in server.log(), server.tail()
