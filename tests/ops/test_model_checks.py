"""Bad model versions dropped into a live server's models directory are never served.

Issue 9, rows 5, 7 and 8, against a real uvicorn server polling its models directory:
versions with the right signature but bad outputs (``digit`` = 12; NaN probabilities on inked
images only, finite on a blank warm-up; negative probabilities; a model answering 3 for
everything with no metrics.json) each fail the probe check, are reported in ``/model`` and
counted, while version 1 keeps answering every request correctly. A version copied slowly is
retried once its copy is complete (its content changed, not the directory's mtime), and
directory names that are not ASCII version numbers change nothing.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.ops.conftest import ServedModel, ServerFactory, build_model, install_version

pytestmark = pytest.mark.slow

WAIT_SECONDS = 60.0  # bound on waiting for the poller, not a speed check
CHECKED_DIGITS = 16


def _digit_12(x: Any, w: Any) -> dict[str, Any]:
    import tensorflow as tf

    probabilities = tf.nn.softmax(tf.matmul(x, w))
    return {
        "probabilities": probabilities,
        "digit": tf.fill([tf.shape(x)[0]], tf.constant(12, tf.int64)),
    }


def _nan_when_inked(x: Any, w: Any) -> dict[str, Any]:
    import tensorflow as tf

    probabilities = tf.nn.softmax(tf.matmul(x, w))
    inked = tf.reduce_max(x, axis=1, keepdims=True) > 0
    probabilities = tf.where(inked, tf.fill(tf.shape(probabilities), np.nan), probabilities)
    return {"probabilities": probabilities, "digit": tf.argmax(probabilities, axis=1)}


def _negative(x: Any, w: Any) -> dict[str, Any]:
    import tensorflow as tf

    probabilities = tf.nn.softmax(tf.matmul(x, w)) * 1.5 - 0.05  # still sums to 1
    return {"probabilities": probabilities, "digit": tf.argmax(probabilities, axis=1)}


def _always_3(x: Any, w: Any) -> dict[str, Any]:
    import tensorflow as tf

    logits = tf.matmul(x, w) * 0.0 + tf.one_hot(3, 10) * 5.0
    probabilities = tf.nn.softmax(logits)
    return {"probabilities": probabilities, "digit": tf.argmax(probabilities, axis=1)}


BAD_MODELS = {
    2: ("digit = 12", _digit_12, "'digit' outside 0..9"),
    3: ("NaN on inked images only", _nan_when_inked, "non-finite probabilities"),
    4: ("negative probabilities", _negative, "outside [0, 1]"),
    5: ("always 3, no metrics.json", _always_3, "below the floor"),
}


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("bad-models")
    built = {}
    for version, (_, outputs, _) in BAD_MODELS.items():
        build_model(root / str(version), outputs, seed=5)
        built[version] = root / str(version)
    return built


def _contains(mapping: Callable[[], dict[int, str]], key: int) -> bool:
    return key in mapping()


def _wait(condition: Callable[[], bool], what: str, server_tail: Callable[[], str]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"{what}:\n{server_tail()}"
        time.sleep(0.1)


def test_bad_versions_are_never_served_and_version_1_keeps_answering(
    start_server: ServerFactory,
    models_dir: Path,
    served_model: ServedModel,
    bad_models: dict[int, Path],
) -> None:
    (models_dir / "²").mkdir()  # at start-up: the server must still start
    server = start_server(models_dir, {"DIGITS_MODEL_POLL_SECONDS": "0.1"})
    client = httpx.Client(base_url=server.url, timeout=30)

    def failed_versions() -> dict[int, str]:
        info = client.get("/model").json()
        return {f["version"]: f["reason"] for f in info["failed_versions"]}

    def answers_are_right() -> None:
        for index in range(CHECKED_DIGITS):
            response = client.post(
                "/predict", files={"file": ("d.png", served_model.pngs[index], "image/png")}
            )
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["model_version"] == 1
            assert answer["digit"] == served_model.digits[index]
            assert 0.0 <= answer["confidence"] <= 1.0
        assert client.get("/health/ready").json()["model_version"] == 1

    with client:
        answers_are_right()
        for version, (what, _, fragment) in BAD_MODELS.items():
            target = install_version(models_dir, bad_models[version], version)
            assert not (target / "metrics.json").exists()
            _wait(partial(_contains, failed_versions, version), f"{what} not reported", server.tail)
            reason = failed_versions()[version]
            assert fragment in reason, (what, reason)
            assert str(models_dir) not in reason
            answers_are_right()
            assert (
                client.post(
                    f"/predict?version={version}",
                    files={"file": ("d.png", served_model.pngs[0], "image/png")},
                ).json()["error"]["code"]
                == "version_not_found"
            )
        (models_dir / "³").mkdir()  # while polling: nothing changes
        (models_dir / str(2**53)).mkdir()

        # A copy in progress (row 7): the SavedModel's graph first, its variables later.
        slow = models_dir / "6"
        slow.mkdir()
        shutil.copy2(served_model.version_dir / "saved_model.pb", slow / "saved_model.pb")
        _wait(lambda: 6 in failed_versions(), "partial copy not reported", server.tail)
        answers_are_right()
        shutil.copytree(served_model.version_dir / "variables", slow / "variables")
        for extra in ("metrics.json", "fingerprint.pb"):
            if (served_model.version_dir / extra).exists():
                shutil.copy2(served_model.version_dir / extra, slow / extra)
        _wait(
            lambda: client.get("/model").json()["version"] == 6,
            "the completed copy was not retried",
            server.tail,
        )
        info = client.get("/model").json()
        assert sorted(failed_versions()) == [2, 3, 4, 5]
        assert {e["name"] for e in info["ignored_entries"]} == {"\\xb2", "\\xb3", str(2**53)}
        response = client.post(
            "/predict", files={"file": ("d.png", served_model.pngs[0], "image/png")}
        ).json()
        assert (response["model_version"], response["digit"]) == (6, served_model.digits[0])

        metrics = client.get("/metrics", headers={"Accept": "text/plain"}).text
        failures = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("digits_model_load_failures_total ")
        )
        assert failures >= 5, metrics
        assert 'digits_model_versions{state="failed"} 4.0' in metrics
    assert "Traceback" not in server.log(), server.tail()
