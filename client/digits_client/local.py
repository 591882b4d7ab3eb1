"""Reading in this process with the service's own code and model: ``digits read --local``.

The one module of the client that imports the service package (``app``, and so TensorFlow):
the command line imports it only for ``--local``, so the client installs and runs without
TensorFlow everywhere else (an import-linter contract keeps it so). It reads exactly as the
service does: the model store chooses and probes the version with the same ``DIGITS_*``
settings, single digits go through the same normalization and model call, strings through the
same pipeline and the same answer as ``POST /recognize``.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np

from app.api.routes.recognize import answer, reading_limits
from app.core.errors import DomainError
from app.reading.normalize import prepare_digit
from app.reading.pipeline import judge_digit, recognize_image
from app.serving.loaded import LoadedModel
from app.serving.store import ModelStore
from app.settings import Settings
from digits_client.batching import Limits, Upload
from digits_client.models import ItemError, Prediction, ReviewReason, StringReading
from digits_client.run import Reading, RunStoppedError


class LocalEngine:
    """Reads with the bundled (or any) models directory, no server.

    ``models_dir`` overrides ``DIGITS_MODELS_DIR``; the version is the one the service would
    serve with the same settings, or ``reading.version``.
    """

    def __init__(self, reading: Reading, models_dir: Path | None = None) -> None:
        self.reading = reading
        self.settings = Settings() if models_dir is None else Settings(models_dir=models_dir)
        settings = self.settings
        self.limits = Limits(
            max_files=settings.max_batch_size,
            max_bytes=settings.max_upload_bytes,
            max_request_pixels=settings.max_request_pixels,
            max_image_pixels=settings.max_image_pixels,
        )
        self._model: LoadedModel | None = None
        # One model call at a time: the model store's models are called by one worker thread
        # in the service, never by several at once.
        self._calls = threading.Lock()

    @property
    def model(self) -> LoadedModel:
        """The model version reading (after :meth:`start`)."""
        assert self._model is not None, "start() first"
        return self._model

    async def start(self) -> None:
        self._model = await asyncio.to_thread(self._load)

    def _load(self) -> LoadedModel:
        settings = self.settings
        if not settings.models_dir.is_dir():
            raise RunStoppedError(
                f"no models directory {settings.models_dir}: pass --models-dir or set "
                "DIGITS_MODELS_DIR",
                usage=True,
            )
        store = ModelStore(
            settings.models_dir,
            policy=settings.policy(),
            probe_min_accuracy=settings.probe_min_accuracy,
            policy_file=settings.version_config,
        )
        store.refresh()
        try:
            return store.get(self.reading.version)
        except DomainError as exc:
            failed = "; ".join(f"version {f.version}: {f.reason}" for f in store.failed)
            raise RunStoppedError(f"{exc.message} {failed}".strip(), usage=True) from None

    def _predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._calls:
            return self.model.predict(images)

    async def read_digits(self, uploads: list[Upload]) -> list[Prediction | ItemError]:
        return await asyncio.to_thread(self._read_digits, uploads)

    def _read_digits(self, uploads: list[Upload]) -> list[Prediction | ItemError]:
        settings = self.settings
        prepared: list[tuple[np.ndarray, bool] | ItemError] = []
        for upload in uploads:
            try:
                prepared.append(
                    prepare_digit(
                        upload.data,
                        normalize=self.reading.normalize or "auto",
                        max_pixels=min(settings.max_image_pixels, settings.max_request_pixels),
                        max_jpeg_scans=settings.max_jpeg_scans,
                    )
                )
            except DomainError as exc:
                prepared.append(ItemError(code=exc.code, message=exc.message))
        valid = [item for item in prepared if not isinstance(item, ItemError)]
        if not valid:
            return [item for item in prepared if isinstance(item, ItemError)]
        try:
            probabilities, digits = self._predict(np.stack([image for image, _ in valid]))
        except DomainError as exc:  # the model's answer failed its check: no use going on
            raise RunStoppedError(f"{exc.code}: {exc.message}") from None
        answers: list[Prediction | ItemError] = []
        row = 0
        for item in prepared:
            if isinstance(item, ItemError):
                answers.append(item)
                continue
            digit = int(digits[row])
            reasons = judge_digit(
                item[0],
                probabilities[row],
                self.model.calibration,
                threshold=self.reading.threshold,
                operator_threshold=settings.review_threshold,
            )
            answers.append(
                Prediction(
                    digit=digit,
                    confidence=float(probabilities[row][digit]),
                    probabilities=probabilities[row].tolist(),
                    normalized=item[1],
                    needs_review=bool(reasons),
                    review_reasons=[
                        ReviewReason(code=r.code.value, message=r.message, position=r.position)
                        for r in reasons
                    ],
                    model_version=self.model.version,
                )
            )
            row += 1
        return answers

    async def read_strings(self, uploads: list[Upload]) -> list[StringReading | ItemError]:
        return await asyncio.to_thread(lambda: [self._read_string(upload) for upload in uploads])

    def _read_string(self, upload: Upload) -> StringReading | ItemError:
        model = self.model
        try:
            result = recognize_image(
                upload.data,
                lambda batch: self._predict(batch)[0],
                model.calibration,
                reading_limits(self.settings),
                threshold=self.reading.threshold,
                operator_threshold=self.settings.review_threshold,
                expected_length=self.reading.expected_length,
            )
        except DomainError as exc:
            if exc.code == "model_output_invalid":
                raise RunStoppedError(f"{exc.code}: {exc.message}") from None
            return ItemError(code=exc.code, message=exc.message)
        return StringReading.model_validate(answer(result, model.version))

    async def close(self) -> None:
        self._model = None
