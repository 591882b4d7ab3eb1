"""The body limit and probes on a real uvicorn server (the test client's transport buffers
bodies, a socket does not)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.app.conftest import FIXTURE_MODEL_ENV, REPO, ModelsDir

LIMIT = 100_000


@pytest.fixture
def server(models: ModelsDir) -> Iterator[str]:
    models.add(1, digit=1)
    env = {
        **os.environ,
        "DIGITS_MODELS_DIR": str(models.path),
        "DIGITS_MAX_UPLOAD_BYTES": str(LIMIT),
        "DIGITS_LOG_FORMAT": "json",
        **FIXTURE_MODEL_ENV,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--port", "0"],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line and process.poll() is not None:
                raise AssertionError("the server exited before it was ready")
            found = re.search(r"Uvicorn running on (http://\S+)", line)
            if found:
                url = found.group(1)
        assert url is not None, "the server did not start"
        yield url
    finally:
        process.terminate()
        process.wait(30)


@pytest.mark.slow
def test_limits_and_probes_on_a_real_server(server: str) -> None:
    assert httpx.get(f"{server}/health/live").status_code == 200
    assert httpx.get(f"{server}/health/ready").json()["model_version"] == 1

    def chunks() -> Iterator[bytes]:
        yield b'--B\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
        for _ in range(200):  # 13 MB announced by nothing: no Content-Length
            yield b"\0" * 65536
        yield b"\r\n--B--\r\n"

    multipart = {"Content-Type": "multipart/form-data; boundary=B"}
    response = httpx.post(f"{server}/predict", content=chunks(), headers=multipart, timeout=30)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"

    declared = httpx.post(f"{server}/predict", content=b"\0" * (LIMIT + 1), headers=multipart)
    assert declared.status_code == 413

    # The server is still fine afterwards.
    assert httpx.get(f"{server}/health/live").status_code == 200
