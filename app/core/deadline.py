"""A per-request deadline, visible to the code doing the request's work wherever it runs.

A route opens :func:`request_deadline` around the work of one request; imaging and segmentation
call :func:`check_deadline` between their steps (and before waiting for a scarce resource), so
work that runs past the deadline stops at the next step with 503 ``deadline_exceeded`` instead
of holding a core for as long as the input makes it take. The deadline lives in a context
variable: the thread pool (``run_in_threadpool``) copies the context into the worker thread, so
the domain code needs no extra parameter, and code run outside any request has no deadline.

A check cannot interrupt one C call (a decode, a resize): those are bounded by the limits
checked before they start (pixels, JPEG scans), and the deadline bounds how many of them run.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from app.core.errors import DomainError, domain_error

__all__ = [
    "Deadline",
    "check_deadline",
    "current_deadline",
    "deadline_exceeded",
    "request_deadline",
]


@dataclass(frozen=True, slots=True)
class Deadline:
    """When the request's work must be done (``time.monotonic()``) and the limit it came from."""

    expires: float
    seconds: float

    def remaining(self) -> float:
        """Seconds left (negative once expired)."""
        return self.expires - time.monotonic()

    def check(self) -> None:
        """Raise 503 ``deadline_exceeded`` once the deadline has passed."""
        if time.monotonic() > self.expires:
            raise deadline_exceeded(self.seconds)


_current: ContextVar[Deadline | None] = ContextVar("request_deadline", default=None)


def deadline_exceeded(seconds: float) -> DomainError:
    """The 503 answered when a request's work runs past its deadline."""
    return domain_error(
        "deadline_exceeded",
        f"The request could not be completed within the {seconds:g} s limit on work per "
        "request, so it was stopped. Send a smaller or simpler image (or fewer images per "
        "request); if the service is busy, try again shortly.",
        details={"deadline_seconds": seconds},
    )


@contextlib.contextmanager
def request_deadline(seconds: float) -> Iterator[Deadline]:
    """Give the work done inside the block (and in threads it starts) ``seconds`` to finish."""
    deadline = Deadline(time.monotonic() + seconds, seconds)
    token = _current.set(deadline)
    try:
        yield deadline
    finally:
        _current.reset(token)


def current_deadline() -> Deadline | None:
    """The deadline of the request being served here, if any."""
    return _current.get()


def check_deadline() -> None:
    """Raise 503 ``deadline_exceeded`` if the current request's deadline has passed."""
    deadline = _current.get()
    if deadline is not None:
        deadline.check()
