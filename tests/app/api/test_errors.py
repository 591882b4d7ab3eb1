"""The one table of domain errors: every code the domain raises is in it, and it is the answer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.schemas import error_responses
from app.core.errors import DOMAIN_ERRORS, HTTP_ERRORS, DomainError, api_error, domain_error

APP = Path(__file__).resolve().parents[3] / "app"


def test_every_raised_domain_code_is_in_the_table() -> None:
    """A code raised with ``domain_error("<code>", ...)`` anywhere in app/ has a status."""
    raised = {
        code
        for path in APP.rglob("*.py")
        for code in re.findall(r'domain_error\(\s*"([a-z_]+)"', path.read_text())
    }
    assert {"empty_file", "no_digits_found", "deadline_exceeded"} <= raised
    assert raised - DOMAIN_ERRORS.keys() == set()


def test_http_layer_codes_are_listed_with_their_status() -> None:
    """Each ``ApiError(<status>, "<code>", ...)`` answered with a documented status is listed."""
    answered = {
        (code, int(status))
        for path in APP.rglob("*.py")
        for status, code in re.findall(r'ApiError\(\s*(\d{3}),\s*"([a-z_]+)"', path.read_text())
        if int(status) < 499 or int(status) == 503
    }
    assert ("invalid_api_key", 401) in answered
    assert answered == set(HTTP_ERRORS.items())


def test_domain_code_knows_no_http() -> None:
    """The reading package never builds an HTTP error itself."""
    files = sorted((APP / "reading").rglob("*.py"))
    assert len(files) > 5
    for file in files:
        assert "ApiError" not in file.read_text(), file


@pytest.mark.parametrize(
    ("code", "status", "retry_after"),
    [
        ("empty_file", 400, None),
        ("image_too_large", 413, None),
        ("unsupported_format", 415, None),
        ("too_many_digits", 422, None),
        ("deadline_exceeded", 503, "1"),
        ("model_output_invalid", 503, "5"),
    ],
)
def test_table_gives_status_and_retry_hint(code: str, status: int, retry_after: str | None) -> None:
    error = api_error(domain_error(code, "What to do."))
    assert (error.status_code, error.code, error.message) == (status, code, "What to do.")
    assert (error.headers or {}).get("Retry-After") == retry_after


def test_error_may_override_the_retry_hint() -> None:
    error = api_error(domain_error("model_output_invalid", "Later.", retry_after=30))
    assert error.headers == {"Retry-After": "30"}


def test_unknown_code_is_a_500() -> None:
    assert api_error(DomainError("Oops.", code="never_listed")).status_code == 500


def test_openapi_descriptions_list_the_codes_of_each_status() -> None:
    responses = error_responses(400, 401, 403, 404, 409, 410, 413, 415, 422, 503)
    for code, spec in DOMAIN_ERRORS.items():
        if spec.status in responses:
            assert f"`{code}`" in responses[spec.status]["description"], code
    for code, status in HTTP_ERRORS.items():
        assert f"`{code}`" in responses[status]["description"], code
    assert "`empty_file`" not in responses[422]["description"]


def test_domain_error_is_answered_in_the_error_shape(client: TestClient) -> None:
    """Through the service: an empty upload is 400 ``empty_file`` from the table."""
    response = client.post("/predict", files={"file": ("x.png", b"", "image/png")})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "empty_file"
