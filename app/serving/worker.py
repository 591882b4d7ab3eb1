"""The inference worker: one thread that runs every model call, batching concurrent requests.

A SavedModel call costs a few hundred microseconds of fixed overhead whatever the batch size,
so the worker takes everything waiting in its queue and runs it as ONE call per model version
(micro-batching). Requests wait on an asyncio future, so the event loop does not block on TensorFlow
while other requests are being answered; with no other request waiting, a request runs alone at
once (no artificial delay, unless ``max_batch_delay_ms`` asks for one).

One exception, for speed: when the request is the only one the process is answering
(``in_flight`` says 1), the worker is idle and no batching delay is set, there is nothing to
batch it with, so its model call runs right on the event loop. Handing it to the worker thread
and back costs two thread wake-ups and GIL hand-overs, more than the call itself; a request
arriving meanwhile waits at most that one call. As soon as a second request is in flight every
call goes through the worker again, so batching under load is unchanged.

Each job carries the model (a :class:`~app.serving.runtime.Servable`, such as
:class:`~app.serving.store.LoadedModel`) its request started with, so a
version swap never changes the answer of a request already in flight.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from app.core import tracing
from app.serving.runtime import Servable

logger = logging.getLogger(__name__)

#: Most images in one model call; a larger backlog is split into several calls.
MAX_IMAGES_PER_CALL: Final = 2048


@dataclass(frozen=True)
class Prediction:
    """The model's answer for some images, and which version gave it."""

    model_version: int
    probabilities: npt.NDArray[np.float32]
    digits: npt.NDArray[np.int64]


class _Job:
    __slots__ = ("future", "images", "loop", "model", "trace")

    def __init__(
        self,
        model: Servable,
        images: npt.NDArray[np.uint8],
        loop: asyncio.AbstractEventLoop | None,
        future: asyncio.Future[Prediction] | concurrent.futures.Future[Prediction],
    ) -> None:
        self.model = model
        self.images = images
        self.loop = loop
        self.future = future
        # The submitting request's trace context (None when tracing is off).
        self.trace = tracing.capture()


_STOP: Final = object()
BatchObserver = Callable[[int, int, float], None]


class InferenceWorker:
    """Runs model calls on a dedicated thread; see the module docstring.

    ``on_batch(images, requests, seconds)`` is called after every model call (for telemetry).
    ``in_flight()`` tells how many requests the process is answering now (the doors count them,
    :class:`app.telemetry.Telemetry`); without it every call goes through the thread.
    """

    def __init__(
        self,
        max_batch_delay_ms: float = 0.0,
        on_batch: BatchObserver | None = None,
        max_images_per_call: int = MAX_IMAGES_PER_CALL,
        in_flight: Callable[[], int] | None = None,
    ) -> None:
        self._delay = max(0.0, max_batch_delay_ms) / 1000.0
        self._on_batch = on_batch
        self._max_images = max_images_per_call
        self._in_flight = in_flight if self._delay == 0 else None
        # Set by the worker thread while it holds jobs; read by the loop without a lock: a
        # stale value only sends one call the slower way, both ways give the same answer.
        self._busy = False
        self._running = False
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        # Jobs of the current event-loop iteration, per loop (tests run several loops).
        self._pending: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the worker thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if self.running:
            return
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._running = True
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the jobs already queued, then stop the thread."""
        if self._thread is None:
            return
        self._running = False
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    async def predict(self, model: Servable, images: npt.NDArray[np.uint8]) -> Prediction:
        """Classify uint8 images [N, 28, 28] with ``model``, without blocking the event loop.

        Jobs submitted during one event-loop iteration reach the worker together, at the end
        of that iteration (see :meth:`_hand_over`).
        """
        self._ensure_running()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Prediction] = loop.create_future()
        pending = self._pending.get(loop)
        if pending is None:
            pending = self._pending[loop] = []
            loop.call_soon(self._hand_over, loop)
        pending.append(_Job(model, images, loop, future))
        return await future

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        # Under load uvicorn starts several requests per loop iteration; queued one by one,
        # each would wake the worker on its own and cost a model call of its own (~0.3 ms of
        # CPU in the worker and TensorFlow's pool, plus GIL hand-offs with the loop). Queued
        # together, the worker takes them in one call. A lone request waits one iteration.
        jobs = self._pending.pop(loop, ())
        if len(jobs) == 1 and self._alone():
            _resolve(self._call_model(jobs))
            return
        for job in jobs:
            self._queue.put(job)

    def _alone(self) -> bool:
        """Whether the only request in flight is the one handing over, with the worker idle."""
        in_flight = self._in_flight
        return in_flight is not None and in_flight() == 1 and not self._busy and self._queue.empty()

    def predict_blocking(self, model: Servable, images: npt.NDArray[np.uint8]) -> Prediction:
        """The same as :meth:`predict`, for code running in a thread rather than the loop."""
        self._ensure_running()
        future: concurrent.futures.Future[Prediction] = concurrent.futures.Future()
        self._queue.put(_Job(model, images, None, future))
        return future.result()

    def _ensure_running(self) -> None:
        # A flag the thread clears when it ends: Thread.is_alive takes a lock, on every request.
        if not self._running:
            raise RuntimeError("the inference worker is not running (app lifespan not started)")

    # --- worker thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            self._running = False

    def _serve(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            assert isinstance(first, _Job)
            self._busy = True
            jobs = [first]
            count = len(first.images)
            deadline = time.monotonic() + self._delay
            while count < self._max_images:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        nxt = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                if nxt is _STOP:
                    # Answer what was gathered, then leave.
                    stopping = True
                    break
                assert isinstance(nxt, _Job)
                jobs.append(nxt)
                count += len(nxt.images)
            self._run_jobs(jobs)
            self._busy = False

    def _run_jobs(self, jobs: list[_Job]) -> None:
        by_model: dict[int, list[_Job]] = {}
        for job in jobs:
            by_model.setdefault(id(job.model), []).append(job)
        outcomes: list[tuple[_Job, Prediction | BaseException]] = []
        for group in by_model.values():
            outcomes.extend(self._call_model(group))
        self._deliver(outcomes)

    def _call_model(self, jobs: Sequence[_Job]) -> list[tuple[_Job, Prediction | BaseException]]:
        model = jobs[0].model
        images = jobs[0].images if len(jobs) == 1 else np.concatenate([j.images for j in jobs])
        traced = [job.trace for job in jobs if job.trace is not None]
        started_ns = time.time_ns() if traced else 0
        started = time.perf_counter()
        try:
            probabilities, digits = model.predict(images)
        except Exception as exc:
            logger.exception("model version %d failed on a batch of %d", model.version, len(images))
            if traced:
                self._trace(traced, started_ns, model, len(images), len(jobs), exc)
            return [(job, exc) for job in jobs]
        if traced:
            self._trace(traced, started_ns, model, len(images), len(jobs))
        if self._on_batch is not None:
            self._on_batch(len(images), len(jobs), time.perf_counter() - started)
        outcomes: list[tuple[_Job, Prediction | BaseException]] = []
        start = 0
        for job in jobs:
            end = start + len(job.images)
            outcomes.append(
                (job, Prediction(model.version, probabilities[start:end], digits[start:end]))
            )
            start = end
        return outcomes

    @staticmethod
    def _trace(
        traced: list[tracing.Captured],
        started_ns: int,
        model: Servable,
        images: int,
        requests: int,
        error: BaseException | None = None,
    ) -> None:
        attributes = {
            "digits.batch.images": images,
            "digits.batch.requests": requests,
            "digits.model.version": model.version,
        }
        tracing.record_model_call(traced, started_ns, time.time_ns(), attributes, error)

    @staticmethod
    def _deliver(outcomes: list[tuple[_Job, Prediction | BaseException]]) -> None:
        per_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Prediction | BaseException]]]
        per_loop = {}
        for job, outcome in outcomes:
            if job.loop is None:
                fut = job.future
                assert isinstance(fut, concurrent.futures.Future)
                if isinstance(outcome, BaseException):
                    fut.set_exception(outcome)
                else:
                    fut.set_result(outcome)
            else:
                per_loop.setdefault(job.loop, []).append((job, outcome))
        # One wake-up per event loop for the whole batch, not one per request.
        for loop, items in per_loop.items():
            # A closed loop means nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, items)


def _resolve(items: Sequence[tuple[_Job, Prediction | BaseException]]) -> None:
    for job, outcome in items:
        fut = job.future
        if fut.done():
            continue  # the request was cancelled (client went away)
        if isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)
