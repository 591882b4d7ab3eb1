"""The inference worker: concurrent requests share one model call; errors reach the caller."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.serving.worker import InferenceWorker, Prediction


class GatedModel:
    """Stands in for a LoadedModel: records each call, and holds the first until released."""

    def __init__(self, version: int = 7) -> None:
        self.version = version
        self.path = Path("/nowhere")
        self.calls: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(len(images))
        self.entered.set()
        self.release.wait(10)
        # Each image's "digit" is its first pixel, so answers can be traced back to inputs.
        digits = images[:, 0, 0].astype(np.int64)
        probabilities = np.zeros((len(images), 10), np.float32)
        probabilities[np.arange(len(images)), digits] = 1.0
        return probabilities, digits


def image(value: int, count: int = 1) -> np.ndarray:
    return np.full((count, 28, 28), value, np.uint8)


def test_waiting_requests_are_merged_into_one_call_and_answered_in_their_order() -> None:
    model = GatedModel()
    seen_batches: list[tuple[int, int]] = []
    worker = InferenceWorker(on_batch=lambda n, r, s: seen_batches.append((n, r)))
    worker.start()

    async def scenario() -> list[Prediction]:
        first = asyncio.ensure_future(worker.predict(model, image(1)))
        await asyncio.to_thread(model.entered.wait, 10)
        # While the model is busy with the first request, five more arrive.
        rest = [
            asyncio.ensure_future(worker.predict(model, image(d, count=d))) for d in (2, 3, 4, 5, 6)
        ]
        await asyncio.sleep(0.05)
        model.release.set()
        return await asyncio.gather(first, *rest)

    try:
        results = asyncio.run(scenario())
    finally:
        worker.stop()
    assert model.calls == [1, 2 + 3 + 4 + 5 + 6]
    assert seen_batches == [(1, 1), (20, 5)]
    for d, result in zip((1, 2, 3, 4, 5, 6), results, strict=True):
        assert result.model_version == 7
        assert list(result.digits) == [d] * d


def test_model_failure_reaches_every_request_of_the_batch() -> None:
    class Broken(GatedModel):
        def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            raise ValueError("graph exploded")

    worker = InferenceWorker()
    worker.start()
    try:
        with pytest.raises(ValueError, match="graph exploded"):
            asyncio.run(worker.predict(Broken(), image(1)))
        # The worker survives and keeps answering.
        model = GatedModel()
        model.release.set()
        assert list(asyncio.run(worker.predict(model, image(4))).digits) == [4]
    finally:
        worker.stop()


def test_blocking_api_for_threads() -> None:
    model = GatedModel()
    model.release.set()
    worker = InferenceWorker()
    worker.start()
    try:
        result = worker.predict_blocking(model, image(9, count=2))
    finally:
        worker.stop()
    assert list(result.digits) == [9, 9]


def test_predict_without_a_running_worker_fails_clearly() -> None:
    worker = InferenceWorker()
    with pytest.raises(RuntimeError, match="not running"):
        worker.predict_blocking(GatedModel(), image(1))


def test_stop_answers_what_is_already_queued() -> None:
    model = GatedModel()
    worker = InferenceWorker()
    worker.start()
    outcome: dict[str, Any] = {}

    def call() -> None:
        outcome["result"] = worker.predict_blocking(model, image(3))

    caller = threading.Thread(target=call)
    caller.start()
    assert model.entered.wait(10)
    model.release.set()
    worker.stop()
    caller.join(10)
    assert list(outcome["result"].digits) == [3]


class ThreadRecorder(GatedModel):
    """Never blocks; records the thread of each call."""

    def __init__(self) -> None:
        super().__init__()
        self.release.set()
        self.threads: list[str] = []

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.threads.append(threading.current_thread().name)
        return super().predict(images)


def _calls_with(in_flight: int, delay_ms: float = 0.0, requests: int = 1) -> ThreadRecorder:
    model = ThreadRecorder()
    batches: list[tuple[int, int]] = []
    worker = InferenceWorker(
        max_batch_delay_ms=delay_ms,
        on_batch=lambda n, r, s: batches.append((n, r)),
        in_flight=lambda: in_flight,
    )
    worker.start()

    async def scenario() -> list[Prediction]:
        return await asyncio.gather(*(worker.predict(model, image(d + 1)) for d in range(requests)))

    try:
        results = asyncio.run(scenario())
    finally:
        worker.stop()
    assert [list(r.digits) for r in results] == [[d + 1] for d in range(requests)]
    assert sum(n for n, _ in batches) == requests, "every call is observed, whichever thread"
    return model


def test_a_request_alone_in_flight_runs_on_the_event_loop() -> None:
    assert _calls_with(in_flight=1).threads == ["MainThread"]


def test_with_other_requests_in_flight_the_worker_thread_batches() -> None:
    assert _calls_with(in_flight=2).threads == ["inference"]
    # Several requests handed over together share one call on the worker, even when the
    # count of requests in flight is stale.
    model = _calls_with(in_flight=1, requests=3)
    assert model.threads == ["inference"]
    assert model.calls == [3]


def test_a_batching_delay_always_uses_the_worker() -> None:
    assert _calls_with(in_flight=1, delay_ms=1.0).threads == ["inference"]
