"""When to send a request again, and how long to wait first.

Two kinds of failure are worth another try: the service was not reached (a refused or timed-out
connection), and the service said "not now" (503, or 429, 502, 504 from a proxy in front of
it). The wait is what the service asked for in ``Retry-After`` when it did, else an exponential
backoff with jitter.

What may already have run is sent again only when the call is **idempotent**, that is when
running it twice has the effect of running it once: a 503 ``deadline_exceeded`` comes after the
work started, and a connection that broke after the request was sent leaves unknown whether it
ran. A connection that was never made ran nothing and is always tried again.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from digits_client.errors import ApiError, DigitsError, NoAnswerError


@dataclass(frozen=True)
class Retry:
    """How often to try a call, and how long to wait in between."""

    attempts: int = 5
    """Tries in all, the first included (1: never try again)."""
    backoff: float = 0.5
    """The first wait without a ``Retry-After``, in seconds; doubled each time after."""
    max_backoff: float = 20.0
    """The longest wait without a ``Retry-After``."""
    max_retry_after: float = 120.0
    """The longest ``Retry-After`` honoured: a service asking for more is not tried again."""

    @classmethod
    def never(cls) -> Retry:
        """One try, no retries."""
        return cls(attempts=1)

    def wait(self, attempt: int, failure: DigitsError, *, idempotent: bool) -> float | None:
        """Seconds to wait before trying again after try number ``attempt`` (from 1) failed
        with ``failure``; None: do not try again."""
        if attempt >= self.attempts:
            return None
        if isinstance(failure, NoAnswerError):
            if failure.sent and not idempotent:
                return None
            return self._backoff(attempt)
        if not isinstance(failure, ApiError) or not failure.transient:
            return None
        if not idempotent and not failure.not_started:
            return None
        if failure.retry_after is not None:
            return failure.retry_after if failure.retry_after <= self.max_retry_after else None
        if failure.code == "model_not_ready":
            # Without Retry-After the service says no model will load until it is restarted.
            return None
        return self._backoff(attempt)

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        # Half fixed, half random: clients that failed together do not retry together.
        return ceiling / 2 + random.uniform(0, ceiling / 2)
