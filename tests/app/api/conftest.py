"""Fixtures of the API's tests (beside tests/app/conftest.py, which every app test shares)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from app.api import deps
from app.api.routes import predict as predict_module


@pytest.fixture
def plain_calls(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """One entry per request the /predict short cut answered (it reads the served model this
    way)."""
    calls: list[bool] = []
    real: Callable[..., deps.Serving] = predict_module.current_serving

    def spy(request: Any) -> deps.Serving:
        calls.append(True)
        return real(request)

    monkeypatch.setattr(predict_module, "current_serving", spy)
    return calls
