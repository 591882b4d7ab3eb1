"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService``.

ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata and ModelInfer (input
``images`` UINT8 [N, 28, 28] in ``raw_input_contents`` or in ``contents.uint_contents``; outputs
in ``raw_output_contents``, as Triton answers). It runs in the app's process, on the app's event
loop (``grpc.aio``), started and stopped by the lifespan when ``DIGITS_GRPC_PORT`` is set, and
uses the same model store and inference worker as every other door, so requests arriving over
gRPC and HTTP at the same moment share model calls. With several worker processes
(``WEB_CONCURRENCY``, :mod:`app.serve`) one port cannot be bound by all of them: the first
worker to bind it serves gRPC, the others serve HTTP alone (the launcher has checked the port
was free, so a failed bind there means a sibling has it).

The message and service code is the protocol's own, as generated from Triton's
``grpc_service.proto`` and shipped in ``tritonclient.grpc`` (``service_pb2``,
``service_pb2_grpc``): the reference implementation's clients are built from the same code, and
no copy of the ``.proto`` nor a build step has to be kept in step with it. The other methods of
the service (repository, shared memory, statistics, streaming) answer UNIMPLEMENTED.
"""

from __future__ import annotations

import logging
import os
import secrets
from typing import Any, Final, NoReturn

import grpc
import numpy as np
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from tritonclient.grpc import service_pb2, service_pb2_grpc

from app.api.deps import API_KEY_HEADER
from app.protocols.common import (
    EXTENSIONS,
    MODEL_NAME,
    SERVER_NAME,
    ProtocolError,
    images_from_bytes,
    images_from_flat,
    invalid,
    parse_version,
    resolve_model,
    served_models,
    v2_model_metadata,
)
from app.serving.runtime import INPUT_KEY, OUTPUTS
from app.serving.store import ModelStore
from app.serving.worker import InferenceWorker
from app.settings import Settings
from app.telemetry import Telemetry

logger = logging.getLogger(__name__)

#: How long in-flight calls may take to finish at shutdown.
STOP_GRACE_SECONDS: Final = 5.0

_STATUS: Final = {
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
}
_METADATA_KEY: Final = API_KEY_HEADER.lower()  # gRPC metadata keys are lower case


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The protocol's methods over the app's model store and inference worker."""

    def __init__(
        self,
        store: ModelStore,
        worker: InferenceWorker,
        settings: Settings,
        telemetry: Telemetry,
        server_version: str,
    ) -> None:
        self._store = store
        self._worker = worker
        self._settings = settings
        self._telemetry = telemetry
        self._version = server_version

    async def ServerLive(self, request: Any, context: Any) -> Any:
        """The process is up."""
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        """A model version is loaded and warmed up."""
        return service_pb2.ServerReadyResponse(ready=self._store.current is not None)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        """Name, version and extensions."""
        return service_pb2.ServerMetadataResponse(
            name=SERVER_NAME, version=self._version, extensions=EXTENSIONS
        )

    async def ModelReady(self, request: Any, context: Any) -> Any:
        """Whether the model (and version, if named) can answer; false for unknown ones."""
        try:
            resolve_model(self._store, request.name, parse_version(request.version))
        except ProtocolError:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        """The model's versions, platform and tensors."""
        try:
            wanted = parse_version(request.version)
            model = resolve_model(self._store, request.name, wanted)
        except ProtocolError as exc:
            await self._abort(context, exc)
        served = [m.version for m in served_models(self._store)]
        versions = [wanted] if wanted is not None else served
        metadata = v2_model_metadata(model, versions)
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=[tensor(**t) for t in metadata["inputs"]],
            outputs=[tensor(**t) for t in metadata["outputs"]],
        )

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        """Classify images [N, 28, 28] of UINT8 with the model (and version) named."""
        try:
            self._check_api_key(context)
            model = resolve_model(
                self._store, request.model_name, parse_version(request.model_version)
            )
            outputs = self._outputs(request)
            if request.raw_input_contents or len(request.inputs) != 1:
                images = self._images(request)
            else:  # typed contents: a Python value per pixel, converted off the event loop
                images = await run_in_threadpool(self._images, request)
        except ProtocolError as exc:
            await self._abort(context, exc)
        # Counted with the HTTP requests: the worker batches a call only when others are in
        # flight (app.serving.worker).
        self._telemetry.in_flight += 1
        try:
            result = await self._worker.predict(model, images)
        finally:
            self._telemetry.in_flight -= 1
        self._telemetry.count_images("grpc:ModelInfer", len(images))
        arrays = {
            "probabilities": (result.probabilities.astype("<f4", copy=False), "FP32"),
            "digit": (result.digits.astype("<i8", copy=False), "INT64"),
        }
        response = service_pb2.ModelInferResponse(
            model_name=MODEL_NAME, model_version=str(result.model_version), id=request.id
        )
        for name in outputs:
            array, datatype = arrays[name]
            response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
            response.raw_output_contents.append(array.tobytes())
        return response

    def _check_api_key(self, context: Any) -> None:
        expected = self._settings.api_key
        if expected is None:
            return
        sent = dict(context.invocation_metadata() or ()).get(_METADATA_KEY)
        if sent is None:
            raise ProtocolError(
                "unauthenticated",
                f"This service requires an API key: send it in the {_METADATA_KEY} metadata.",
            )
        if not secrets.compare_digest(
            str(sent).encode("utf-8"), expected.get_secret_value().encode("utf-8")
        ):
            raise ProtocolError(
                "unauthenticated", f"The API key in the {_METADATA_KEY} metadata is not valid."
            )

    def _images(self, request: Any) -> np.ndarray:
        limit = self._settings.max_batch_size
        if len(request.inputs) != 1:
            raise invalid(f"The request must have exactly one input, '{INPUT_KEY}'.")
        tensor = request.inputs[0]
        if tensor.name != INPUT_KEY:
            raise invalid(f"Unknown input {tensor.name!r}: the model has one input, '{INPUT_KEY}'.")
        if tensor.datatype != "UINT8":
            raise invalid(
                f"Input '{INPUT_KEY}' must have datatype UINT8 (raw pixels 0-255), got "
                f"{tensor.datatype!r}."
            )
        shape = list(tensor.shape)
        if request.raw_input_contents:
            if len(request.raw_input_contents) != 1:
                raise invalid("raw_input_contents must hold one entry per input (one).")
            if tensor.HasField("contents"):
                raise invalid(f"Input '{INPUT_KEY}' has both contents and raw_input_contents.")
            return images_from_bytes(request.raw_input_contents[0], shape, limit)
        return images_from_flat(list(tensor.contents.uint_contents), shape, limit)

    @staticmethod
    def _outputs(request: Any) -> list[str]:
        if not request.outputs:
            return list(OUTPUTS)
        names = [output.name for output in request.outputs]
        unknown = [name for name in names if name not in OUTPUTS]
        if unknown:
            raise invalid(f"Unknown output(s) {unknown}: the outputs are {', '.join(OUTPUTS)}.")
        return names

    async def _abort(self, context: Any, error: ProtocolError) -> NoReturn:
        self._telemetry.count_error(error.code)
        status = _STATUS.get(error.code, grpc.StatusCode.INVALID_ARGUMENT)
        await context.abort(status, error.message)
        raise AssertionError("context.abort raises")  # pragma: no cover


async def start(app: FastAPI) -> grpc.aio.Server | None:
    """Start the gRPC service on the running event loop when ``DIGITS_GRPC_PORT`` is set."""
    settings: Settings = app.state.settings
    if not settings.grpc_port:
        return None
    server = grpc.aio.server(
        options=[
            # The same body limit as HTTP: a message is refused before it is parsed.
            ("grpc.max_receive_message_length", settings.max_upload_bytes),
            # gRPC shares a port with any other process by default (SO_REUSEPORT): a second
            # instance would silently take half the calls. A port in use must fail the start.
            ("grpc.so_reuseport", 0),
        ]
    )
    service = InferenceService(
        app.state.store, app.state.worker, settings, app.state.telemetry, app.version
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:
        if _several_workers():
            logger.info("gRPC on %s is served by another worker process", address)
            return None
        raise RuntimeError(
            f"the gRPC service cannot listen on {address}: is another process using the port? "
            "Set DIGITS_GRPC_PORT (and DIGITS_GRPC_HOST) to a free address."
        ) from exc
    await server.start()
    logger.info("Open Inference Protocol gRPC service listening on %s", address)
    return server


def _several_workers() -> bool:
    """Whether the launcher started more than one worker process (it sets WEB_CONCURRENCY)."""
    try:
        return int(os.environ.get("WEB_CONCURRENCY", "1")) > 1
    except ValueError:
        return False


async def stop(server: grpc.aio.Server | None) -> None:
    """Stop the gRPC service, letting calls in flight finish for a few seconds."""
    if server is not None:
        await server.stop(STOP_GRACE_SECONDS)
