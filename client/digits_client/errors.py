"""What can go wrong when asking the service: its own errors, and the network's.

The service answers every error as ``{"error": {"code", "message", "details"}}``;
:class:`ApiError` carries that, with the HTTP status and the ``Retry-After`` hint.
:class:`NoAnswerError` is a request that got no answer at all.
"""

from __future__ import annotations

from typing import Any, Final

#: Codes that concern the whole run, not one image: a wrong key (or the client's key where the
#: reviewers' is needed), a version not served, a review queue closed to reviewers.
FATAL_CODES: Final = frozenset(
    {
        "missing_api_key",
        "invalid_api_key",
        "reviewer_key_required",
        "reviews_closed",
        "version_not_found",
        "not_found",
        "method_not_allowed",
    }
)
#: Codes the service answers before any work starts (no model version to choose yet): the
#: request did nothing, so it may be sent again even when it is not idempotent.
NOT_STARTED_CODES: Final = frozenset({"model_not_ready"})
#: Statuses that say "not now": worth another try later (idempotent calls only).
TRANSIENT_STATUSES: Final = frozenset({429, 502, 503, 504})


class DigitsError(Exception):
    """Any error of this client."""

    code: str = "client_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ApiError(DigitsError):
    """An error answer of the service, in its one error shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = details or {}
        self.retry_after = retry_after
        """Seconds the service asked to wait before trying again (``Retry-After``), if any."""

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    @property
    def transient(self) -> bool:
        """Whether trying again later may succeed (a 503, a 502/504 of a proxy, a 429)."""
        return self.status in TRANSIENT_STATUSES

    @property
    def not_started(self) -> bool:
        """Whether the service refused before doing anything (so sending again is safe)."""
        return self.code in NOT_STARTED_CODES

    @property
    def fatal(self) -> bool:
        """Whether it concerns every request alike (the key, the version), not one image."""
        return self.code in FATAL_CODES


class NoAnswerError(DigitsError):
    """No answer: the service could not be reached, or the connection broke."""

    code = "connection_error"

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent
        """Whether the request may have reached the service (False: it never left)."""
