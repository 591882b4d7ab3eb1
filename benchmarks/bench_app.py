"""A bench-only app: the real service plus a no-op upload endpoint, the framework's ceiling.

``POST /bench/noop`` takes the same multipart upload as ``/predict`` (field ``file``, parsed by
FastAPI into an ``UploadFile`` and read), goes through the same middleware, and answers a
constant JSON body. The gap between it and ``/predict`` is what the service itself costs.
This module lives under benchmarks/ so the endpoint never ships in the public app.

Run: ``uvicorn benchmarks.bench_app:create_bench_app --factory`` (from the repository root).
"""

from __future__ import annotations

import json
from typing import Annotated, Final

from fastapi import FastAPI, File, Response, UploadFile

from app.main import create_app

NOOP_PATH: Final = "/bench/noop"
# Shaped like a /predict answer so both send a body of about the same size.
_CONSTANT: Final = json.dumps(
    {
        "digit": 7,
        "confidence": 0.99,
        "probabilities": [0.001] * 7 + [0.99] + [0.001] * 2,
        "normalized": False,
        "model_version": 1,
    }
).encode()


async def noop(file: Annotated[UploadFile, File()]) -> Response:
    """Read the upload and answer a constant: no decoding, no model."""
    await file.read()
    return Response(_CONSTANT, media_type="application/json")


def create_bench_app() -> FastAPI:
    """The public app (same settings, lifespan and middleware) with the no-op route added."""
    app = create_app()
    app.add_api_route(NOOP_PATH, noop, methods=["POST"], include_in_schema=False)
    return app
