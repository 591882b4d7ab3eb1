"""Behaviour under load, against the real server: concurrent clients, malformed traffic mixed in.

Bounded in time (a few seconds of traffic per test) and asserted on correctness only: every
valid request answered 200 with the digit the model itself gives for that image, every bad one
a 4xx in the service's error shape, no connection errors, liveness answering throughout.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.ops.conftest import ServedModel, ServerFactory, assert_error_shape
from tests.ops.hostile import LIMITS_ENV, Hostile, hostile_requests

pytestmark = pytest.mark.slow

CLIENTS = 32
LOAD_SECONDS = 3.0


@dataclass
class Tally:
    """What the clients saw."""

    statuses: Counter[int] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    hostile: Counter[str] = field(default_factory=Counter)
    live: Counter[int] = field(default_factory=Counter)

    @property
    def answered(self) -> int:
        """Valid requests answered, whatever the status."""
        return sum(self.statuses.values())


async def _valid_client(
    url: str, model: ServedModel, offset: int, until: float, tally: Tally
) -> None:
    """Post digits one after another until ``until``, checking every answer."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        i = offset
        while time.monotonic() < until:
            index = i % len(model.pngs)
            i += 1
            try:
                response = await client.post(
                    "/predict", files={"file": (f"{index}.png", model.pngs[index], "image/png")}
                )
            except httpx.TransportError as exc:
                tally.transport_errors.append(f"valid: {exc!r}")
                continue
            tally.statuses[response.status_code] += 1
            if response.status_code != 200:
                tally.wrong.append(f"image {index}: {response.status_code} {response.text[:200]}")
                continue
            answer = response.json()
            if (answer["digit"], answer["model_version"], answer["normalized"]) != (
                model.digits[index],
                1,
                False,
            ):
                tally.wrong.append(f"image {index}: {answer} (model says {model.digits[index]})")


async def _hostile_client(
    url: str, requests: list[Hostile], offset: int, until: float, tally: Tally
) -> None:
    """Send bad requests round-robin until ``until``; each must get its own 4xx."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        i = offset
        while time.monotonic() < until:
            bad = requests[i % len(requests)]
            i += 1
            try:
                response = await bad.send(client)
            except httpx.TransportError as exc:
                tally.transport_errors.append(f"{bad.kind}: {exc!r}")
                continue
            tally.hostile[bad.kind] += 1
            if response.status_code != bad.status:
                tally.wrong.append(f"{bad.kind}: {response.status_code} {response.text[:200]}")
                continue
            try:
                assert_error_shape(response.json(), bad.code)
            except (AssertionError, ValueError) as exc:
                tally.wrong.append(f"{bad.kind}: {exc}")


async def _liveness_prober(url: str, until: float, tally: Tally) -> None:
    """GET /health/live on its own connection, again and again, until ``until``."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        while time.monotonic() < until:
            try:
                response = await client.get("/health/live")
            except httpx.TransportError as exc:
                tally.transport_errors.append(f"live: {exc!r}")
            else:
                tally.live[response.status_code] += 1
            await asyncio.sleep(0.02)


def test_32_concurrent_clients_all_get_the_models_answer(
    start_server: ServerFactory, models_dir: Path, served_model: ServedModel
) -> None:
    server = start_server(models_dir, {"DIGITS_LOG_LEVEL": "WARNING"})
    tally = Tally()

    async def run() -> None:
        until = time.monotonic() + LOAD_SECONDS
        await asyncio.gather(
            *(_valid_client(server.url, served_model, c * 2, until, tally) for c in range(CLIENTS))
        )

    asyncio.run(run())

    assert tally.transport_errors == []
    assert tally.wrong == [], f"{len(tally.wrong)} wrong answers, e.g. {tally.wrong[:5]}"
    assert set(tally.statuses) == {200}
    # Every client got through at least once, so all 32 were served concurrently.
    assert tally.answered >= CLIENTS
    # The service micro-batched concurrent requests into shared model calls.
    inference = httpx.get(f"{server.url}/metrics").json()["service"]["inference"]
    assert inference["requests"] >= tally.answered
    assert inference["model_calls"] < inference["requests"]


def test_malformed_requests_mixed_in_get_4xx_while_valid_and_liveness_are_served(
    start_server: ServerFactory, models_dir: Path, served_model: ServedModel
) -> None:
    server = start_server(models_dir, {**LIMITS_ENV, "DIGITS_LOG_LEVEL": "WARNING"})
    bad = hostile_requests(served_model.images[0])
    tally = Tally()

    async def run() -> None:
        until = time.monotonic() + LOAD_SECONDS
        await asyncio.gather(
            *(_valid_client(server.url, served_model, c * 3, until, tally) for c in range(16)),
            *(_hostile_client(server.url, bad, c * 5, until, tally) for c in range(12)),
            _liveness_prober(server.url, until, tally),
        )

    asyncio.run(run())

    assert tally.transport_errors == [], tally.transport_errors[:5]
    assert tally.wrong == [], f"{len(tally.wrong)} wrong answers, e.g. {tally.wrong[:5]}"
    assert set(tally.statuses) == {200}
    assert tally.answered >= 16
    assert set(tally.hostile) == {b.kind for b in bad}, "every kind of bad request was sent"
    assert set(tally.live) == {200}
    assert sum(tally.live.values()) >= 1
    # Nothing reached the generic 500 handler.
    assert "unhandled error" not in server.log()
