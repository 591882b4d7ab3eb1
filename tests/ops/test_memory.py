"""Resident memory of the real server stays bounded under sustained and hostile traffic.

The CI-sized version of benchmarks/bench_memory.py (1,000 warm-up then 20,000 requests within
20 MB; 1,000 hostile inputs within 50 MB): fewer requests, the same bounds. A leak of a few
kilobytes per request, or a buffer kept per refused upload (each oversized body here is
256 KiB), would cross them. RSS is VmRSS of the uvicorn process from /proc.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.ops.conftest import ServedModel, ServerFactory
from tests.ops.hostile import LIMITS_ENV, Hostile, hostile_requests

pytestmark = pytest.mark.slow

MB = 1024 * 1024
WARMUP = 300
REQUESTS = 1_000
HOSTILE_ROUNDS = 20  # x 12 kinds = 240 hostile requests
CONCURRENCY = 16
MAX_GROWTH = 20 * MB
MAX_HOSTILE_GROWTH = 50 * MB


async def _send_valid(url: str, model: ServedModel, count: int) -> Counter[int]:
    statuses: Counter[int] = Counter()
    queue = list(range(count))

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            while queue:
                index = queue.pop() % len(model.pngs)
                response = await http.post(
                    "/predict", files={"file": ("d.png", model.pngs[index], "image/png")}
                )
                statuses[response.status_code] += 1

    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return statuses


async def _send_hostile(url: str, requests: list[Hostile], rounds: int) -> list[str]:
    wrong: list[str] = []
    queue = [bad for _ in range(rounds) for bad in requests]

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            while queue:
                bad = queue.pop()
                response = await bad.send(http)
                if response.status_code != bad.status:
                    wrong.append(f"{bad.kind}: {response.status_code}")

    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return wrong


def test_rss_growth_is_bounded_over_valid_then_hostile_requests(
    start_server: ServerFactory, models_dir: Path, served_model: ServedModel
) -> None:
    server = start_server(models_dir, {**LIMITS_ENV, "DIGITS_LOG_LEVEL": "WARNING"})
    hostile = hostile_requests(served_model.images[0])

    assert asyncio.run(_send_valid(server.url, served_model, WARMUP)) == {200: WARMUP}
    after_warmup = server.rss()
    assert asyncio.run(_send_valid(server.url, served_model, REQUESTS)) == {200: REQUESTS}
    after_requests = server.rss()
    assert asyncio.run(_send_hostile(server.url, hostile, HOSTILE_ROUNDS)) == []
    after_hostile = server.rss()

    growth = after_requests - after_warmup
    hostile_growth = after_hostile - after_requests
    report = (
        f"RSS {after_warmup / MB:.1f} MB after warm-up, {after_requests / MB:.1f} MB after "
        f"{REQUESTS} requests, {after_hostile / MB:.1f} MB after {len(hostile) * HOSTILE_ROUNDS} "
        "hostile ones"
    )
    print(report)  # shown with pytest -rP: the margin left under the bounds
    assert growth <= MAX_GROWTH, report
    assert hostile_growth <= MAX_HOSTILE_GROWTH, report
