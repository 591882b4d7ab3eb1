"""TensorFlow's private session callable (runtime.direct_callable): used as pinned, fallback run.

The model call goes through ``Session._make_callable_from_options`` (220 → 60 µs per one-image
call, commit 4848f91). These tests fail when an installed TensorFlow no longer takes that path
(the service would silently answer at the slower public path's cost), and run the service
through the public fallback, ``Session.make_callable``, checking its answers.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from fastapi.testclient import TestClient

from app.main import create_app
from app.serving import runtime
from tests.app.api.test_predict import digit_png
from tests.app.conftest import ModelsDir, make_settings

UPGRADE = (
    f"TensorFlow {tf.__version__} no longer makes the model's session callable through "
    "Session._make_callable_from_options: the model call fell back to make_callable (220 µs "
    "instead of 60 µs per one-image call). Adapt runtime.direct_callable to this TensorFlow, or "
    "accept the fallback."
)


def _owner() -> type:
    """The class of tf.compat.v1.Session's hierarchy that defines the private method."""
    classes: tuple[type, ...] = tf.compat.v1.Session.__mro__
    for cls in classes:
        if runtime.DIRECT_CALLABLE_METHOD in vars(cls):
            return cls
    raise AssertionError(UPGRADE)


def _loaded(path: Path) -> runtime.TensorFlowPredictor:
    predictor = runtime.load(path)
    predictor.warm()
    return predictor


def _assert_answers_as_the_signature(
    predictor: runtime.TensorFlowPredictor, path: Path, images: np.ndarray
) -> None:
    signature = tf.saved_model.load(str(path)).signatures[runtime.SIGNATURE]
    for image in images[:10]:
        probabilities, digits = predictor.predict(image[np.newaxis])
        expected = signature(**{runtime.INPUT_KEY: tf.constant(image[np.newaxis])})
        np.testing.assert_array_equal(probabilities, expected["probabilities"].numpy())
        np.testing.assert_array_equal(digits, expected["digit"].numpy())
    probabilities, digits = predictor.predict(images)
    expected = signature(**{runtime.INPUT_KEY: tf.constant(images)})
    np.testing.assert_array_equal(digits, expected["digit"].numpy())
    np.testing.assert_allclose(probabilities, expected["probabilities"].numpy(), rtol=0, atol=1e-5)


def _service_answers_through(models: ModelsDir, session_call: str) -> None:
    """The app serves /predict with the model called the ``session_call`` way."""
    models.add(1, digit=1)
    app = create_app(make_settings(models.path))
    with TestClient(app) as client:
        predictor = app.state.store.current.predictor
        assert predictor.session_call == session_call
        assert predictor.session_fast_path
        answer = client.post("/predict", files={"file": ("d.png", digit_png(), "image/png")})
    assert answer.status_code == 200
    assert answer.json()["digit"] == 1


# --- the pinned TensorFlow takes the private path ---------------------------------------------


def test_the_installed_tensorflow_has_the_direct_session_callable() -> None:
    method = getattr(_owner(), runtime.DIRECT_CALLABLE_METHOD)
    assert list(inspect.signature(method).parameters) == ["self", "callable_options"], UPGRADE
    from tensorflow.core.protobuf import config_pb2

    fields = config_pb2.CallableOptions.DESCRIPTOR.fields_by_name
    assert {"feed", "fetch"} <= set(fields), UPGRADE


def test_the_model_is_called_through_the_direct_session_callable(
    constant_models: dict[int, Path], models: ModelsDir
) -> None:
    assert _loaded(constant_models[1]).session_call == runtime.DIRECT, UPGRADE
    _service_answers_through(models, runtime.DIRECT)


# --- the public fallback: make_callable -------------------------------------------------------


@pytest.fixture
def without_private_method(monkeypatch: pytest.MonkeyPatch) -> None:
    """A TensorFlow whose Session has no _make_callable_from_options."""
    monkeypatch.delattr(_owner(), runtime.DIRECT_CALLABLE_METHOD)
    assert not hasattr(tf.compat.v1.Session, runtime.DIRECT_CALLABLE_METHOD)


@pytest.fixture
def private_method_of_another_shape(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """A TensorFlow whose _make_callable_from_options takes other arguments (records tries)."""
    calls: list[Any] = []

    def reshaped(self: Any, callable_options: Any, run_metadata: Any) -> Any:
        return None  # pragma: no cover (the one-argument call fails before it runs)

    def recording(self: Any, *args: Any) -> Any:
        calls.append(args)
        return reshaped(self, *args)

    monkeypatch.setattr(_owner(), runtime.DIRECT_CALLABLE_METHOD, recording)
    return calls


@pytest.mark.usefixtures("without_private_method")
def test_without_the_private_method_the_model_answers_through_make_callable(
    bundled_model_dir: Path, mnist_test: tuple[np.ndarray, np.ndarray], models: ModelsDir
) -> None:
    predictor = _loaded(bundled_model_dir)
    assert predictor.session_call == runtime.MAKE_CALLABLE
    assert predictor.session_fast_path
    _assert_answers_as_the_signature(predictor, bundled_model_dir, mnist_test[0][:200])
    _service_answers_through(models, runtime.MAKE_CALLABLE)


def test_a_private_method_of_another_shape_falls_back_to_make_callable(
    private_method_of_another_shape: list[Any],
    bundled_model_dir: Path,
    mnist_test: tuple[np.ndarray, np.ndarray],
) -> None:
    predictor = _loaded(bundled_model_dir)
    assert private_method_of_another_shape, "the private method was tried first"
    assert predictor.session_call == runtime.MAKE_CALLABLE
    _assert_answers_as_the_signature(predictor, bundled_model_dir, mnist_test[0][:200])
