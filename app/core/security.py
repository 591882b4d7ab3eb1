"""The API-key check: one header, one comparison, one pair of errors, for every door.

When the service is started with a key (``DIGITS_API_KEY``), inference and ``/model`` require
it: in the ``X-API-Key`` header over HTTP (the service's own API, TF Serving REST, Open
Inference Protocol REST) and in the ``x-api-key`` metadata over gRPC. :func:`check_api_key` is
the check all of them run; :func:`api_key_dependency` wires it into FastAPI.

The key must be sent exactly once. HTTP and gRPC both let a request repeat a header or a
metadata key, and the two stacks read different copies (Starlette the first, gRPC's list in
order, a dict of it the last), so a proxy or a log that looks at one copy would see another key
than the check: more than one value is refused (``invalid_api_key``) whatever they are, by
:func:`check_api_key_values`, which every door runs on all the values it received.

This module knows no settings: a door hands it the configured key, or a function that reads it
from the request (:data:`ExpectedKey`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine, Sequence
from typing import Annotated, Any, Final

from fastapi import Request, Security
from fastapi.security import APIKeyHeader
from pydantic import SecretStr

from app.core.errors import ApiError

API_KEY_HEADER: Final = "X-API-Key"
#: The same key in gRPC metadata, whose keys are lower case.
API_KEY_METADATA: Final = API_KEY_HEADER.lower()

#: The OpenAPI security scheme every guarded route declares (one scheme in the document).
api_key_scheme: Final = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="Required on the prediction endpoints and /model when the service is started "
    "with DIGITS_API_KEY set.",
)

#: Reads the configured key (None: no key required) from the request's app.
ExpectedKey = Callable[[Request], SecretStr | None]
ApiKeyCheck = Callable[..., Coroutine[Any, Any, None]]


def key_matches(given: str, expected: SecretStr) -> bool:
    """Whether ``given`` is the configured key, in constant time: the time taken says nothing
    about how much of the key matched."""
    return secrets.compare_digest(
        given.encode("utf-8"), expected.get_secret_value().encode("utf-8")
    )


def check_api_key(given: str | None, expected: SecretStr | None, where: str) -> None:
    """Refuse a request whose key is missing or wrong when a key is configured.

    ``given`` is the key the request sent (None when it sent none); ``where`` says where it
    belongs, for the message (``"X-API-Key header"``, ``"x-api-key metadata"``).

    Raises:
        ApiError: 401 ``missing_api_key`` or ``invalid_api_key``.
    """
    if expected is None:
        return
    if given is None:
        raise ApiError(
            401,
            "missing_api_key",
            f"This service requires an API key: send it in the {where}.",
        )
    if not key_matches(given, expected):
        raise ApiError(401, "invalid_api_key", f"The API key in the {where} is not valid.")


def check_api_key_values(values: Sequence[str], expected: SecretStr | None, where: str) -> None:
    """:func:`check_api_key` on every value a request sent for the key (its header's or its
    metadata's, in any order): none, or one empty value, is a missing key; more than one is
    refused, even when one of them is right.

    Raises:
        ApiError: 401 ``missing_api_key`` or ``invalid_api_key``.
    """
    if expected is None:
        return
    if len(values) > 1:
        raise ApiError(
            401,
            "invalid_api_key",
            f"The {where} was sent {len(values)} times: send exactly one API key.",
        )
    check_api_key(values[0] if values and values[0] else None, expected, where)


def passes_api_key(values: Sequence[str], expected: SecretStr | None) -> bool:
    """Whether :func:`check_api_key_values` lets these values through (a door's short cut)."""
    if expected is None:
        return True
    return len(values) == 1 and values[0] != "" and key_matches(values[0], expected)


def api_key_dependency(expected: ExpectedKey) -> ApiKeyCheck:
    """A FastAPI dependency that runs :func:`check_api_key_values` on the ``X-API-Key`` header.

    Every value of the header is read (:func:`check_api_key_values`). The dependency declares
    :data:`api_key_scheme`, so every route that uses it documents the same security scheme.
    """

    async def require_api_key(
        request: Request, api_key: Annotated[str | None, Security(api_key_scheme)] = None
    ) -> None:
        """Check the X-API-Key header when the service has an API key configured (401 otherwise)."""
        values = request.headers.getlist(API_KEY_HEADER)
        check_api_key_values(values, expected(request), f"{API_KEY_HEADER} header")

    return require_api_key
