"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService``.

ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata and ModelInfer (input
``images`` UINT8 [N, 28, 28] in ``raw_input_contents`` or in ``contents.uint_contents``; outputs
in ``raw_output_contents``, as Triton answers). It runs in the app's process, on the app's event
loop (``grpc.aio``), started and stopped by the lifespan when ``DIGITS_GRPC_PORT`` is set, and
uses the same model store and inference worker as every other door, so requests arriving over
gRPC and HTTP at the same moment share model calls. The server's limits (connections, idle and
age, calls in progress), its port among several worker processes and its spans are
:mod:`app.protocols.grpc_server`'s: with several workers (``WEB_CONCURRENCY``, :mod:`app.serve`)
the first to claim the port serves gRPC, the others serve HTTP alone (the launcher has checked
the port was free, so a port taken there means a sibling has it).

The message and service code is the protocol's own, as generated from Triton's
``grpc_service.proto`` and shipped in ``tritonclient.grpc`` (``service_pb2``,
``service_pb2_grpc``): the reference implementation's clients are built from the same code, and
no copy of the ``.proto`` nor a build step has to be kept in step with it. Every other method
of the service (repository, shared memory, statistics, streaming, whatever the installed
``service_pb2`` lists) answers UNIMPLEMENTED, quietly: a debug line, no traceback (the
generated servicer's defaults raise, and grpc.aio logs each call as an error).

This door only translates protobuf messages: the checks, the outputs and the metadata are the
protocol core's (:mod:`app.protocols.v2`), shared with the REST door, and the API key is checked
by :func:`app.core.security.check_api_key_values` as on every HTTP route (every ``x-api-key``
value of the metadata: more than one is refused).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, Final, NoReturn

import grpc
import numpy as np
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from tritonclient.grpc import service_pb2, service_pb2_grpc

from app.core.errors import ApiError, DomainError, api_error
from app.core.security import API_KEY_METADATA, check_api_key_values
from app.core.tracing import tracer_provider_of
from app.protocols import grpc_server, v2
from app.protocols.common import MODEL_NAME, ModelRef, ProtocolError, invalid, resolve
from app.serving.runtime import INPUT_KEY
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
#: The service as the protocol describes it: every method a client may call.
SERVICE: Final = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]


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
        return service_pb2.ServerReadyResponse(ready=v2.server_ready(self._store))

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        """Name, version and extensions."""
        return service_pb2.ServerMetadataResponse(**v2.server_metadata(self._version))

    async def ModelReady(self, request: Any, context: Any) -> Any:
        """Whether the model (and version, if named) can answer; false for unknown ones."""
        try:
            v2.ready_model(self._store, ModelRef(request.name, request.version))
        except ProtocolError:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        """The model's versions, platform and tensors."""
        try:
            metadata = v2.model_metadata(self._store, ModelRef(request.name, request.version))
        except ProtocolError as exc:
            await self._abort(context, exc)
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
            model = resolve(self._store, ModelRef(request.model_name, request.model_version))
            # Each output once: the answer is built per output named.
            names = v2.output_names(output.name for output in request.outputs)
            outputs = [v2.RequestedOutput(name) for name in names]
            if request.raw_input_contents or len(request.inputs) != 1:
                images = self._images(request)
            else:  # typed contents: a Python value per pixel, converted off the event loop
                images = await run_in_threadpool(self._images, request)
            wanted = v2.InferRequest(images, request.id, outputs or v2.all_outputs())
        except ProtocolError as exc:
            await self._abort(context, exc)
        # Counted with the HTTP requests: the worker batches a call only when others are in
        # flight (app.serving.worker).
        self._telemetry.in_flight += 1
        try:
            answer = await v2.infer(self._worker, model, wanted)
        except DomainError as exc:  # the model answered garbage (app.serving.output_check)
            error = api_error(exc)
            self._telemetry.count_error(error.code)
            status = (
                grpc.StatusCode.UNAVAILABLE
                if error.status_code == 503
                else grpc.StatusCode.INTERNAL
            )
            await context.abort(status, error.message)
            raise AssertionError("context.abort raises") from None  # pragma: no cover
        finally:
            self._telemetry.in_flight -= 1
        self._telemetry.count_images("grpc:ModelInfer", len(images))
        response = service_pb2.ModelInferResponse(
            model_name=MODEL_NAME, model_version=answer.model_version, id=answer.id
        )
        for output in answer.outputs:
            response.outputs.add(
                name=output.name, datatype=output.datatype, shape=list(output.array.shape)
            )
            response.raw_output_contents.append(output.array.tobytes())
        return response

    def _check_api_key(self, context: Any) -> None:
        sent = [
            str(value)
            for key, value in (context.invocation_metadata() or ())
            if key == API_KEY_METADATA
        ]
        try:
            check_api_key_values(sent, self._settings.api_key, f"{API_KEY_METADATA} metadata")
        except ApiError as exc:
            raise ProtocolError("unauthenticated", exc.message) from None

    def _images(self, request: Any) -> np.ndarray:
        """The input's images, from raw_input_contents or typed contents (uint_contents)."""
        v2.check_input_count(len(request.inputs))
        tensor = request.inputs[0]
        v2.check_input(tensor.name, tensor.datatype)
        shape = list(tensor.shape)
        limit = self._settings.max_batch_size
        if request.raw_input_contents:
            if len(request.raw_input_contents) != 1:
                raise invalid("raw_input_contents must hold one entry per input (one).")
            if tensor.HasField("contents"):
                raise invalid(f"Input '{INPUT_KEY}' has both contents and raw_input_contents.")
            return v2.input_images(shape, limit, raw=request.raw_input_contents[0])
        return v2.input_images(shape, limit, data=list(tensor.contents.uint_contents))

    async def _abort(self, context: Any, error: ProtocolError) -> NoReturn:
        self._telemetry.count_error(error.code)
        status = _STATUS.get(error.code, grpc.StatusCode.INVALID_ARGUMENT)
        await context.abort(status, error.message)
        raise AssertionError("context.abort raises")  # pragma: no cover


Method = Callable[[Any, Any, Any], Coroutine[Any, Any, None]]


def _unimplemented(name: str) -> Method:
    """A method of the protocol this server does not serve: UNIMPLEMENTED, and a debug line."""
    message = (
        f"{SERVICE.full_name}/{name} is not implemented by this server; it serves "
        f"{', '.join(IMPLEMENTED)}."
    )

    async def unimplemented(self: Any, request: Any, context: Any) -> None:
        logger.debug("gRPC %s: not implemented", name)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    unimplemented.__name__ = unimplemented.__qualname__ = name
    unimplemented.__doc__ = f"UNIMPLEMENTED: {name} is not served."
    return unimplemented


#: The protocol's methods this server answers; :data:`UNIMPLEMENTED` are all the others.
IMPLEMENTED: Final = tuple(m.name for m in SERVICE.methods if m.name in vars(InferenceService))
UNIMPLEMENTED: Final = tuple(m.name for m in SERVICE.methods if m.name not in IMPLEMENTED)
for _name in UNIMPLEMENTED:
    setattr(InferenceService, _name, _unimplemented(_name))


async def start(app: FastAPI) -> grpc.aio.Server | None:
    """Start the gRPC service on the running event loop when ``DIGITS_GRPC_PORT`` is set.

    Returns None without binding when another worker process of the service has the port.

    Raises:
        RuntimeError: when the port cannot be had (another program has it), naming the address.
    """
    settings: Settings = app.state.settings
    if not settings.grpc_port:
        return None
    server = grpc_server.new_server(settings, tracer_provider_of(app))
    service = InferenceService(
        app.state.store, app.state.worker, settings, app.state.telemetry, app.version
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)
    address = grpc_server.address(settings.grpc_host, settings.grpc_port)
    with grpc_server.claim(settings.grpc_port) as claimed:
        # Checked before grpc binds: a failed bind in grpc's core prints a line of its own.
        if not claimed or not grpc_server.port_free(settings.grpc_host, settings.grpc_port):
            if _several_workers():
                logger.info("gRPC on %s is served by another worker process", address)
                return None
            raise _port_taken(address)
        try:
            server.add_insecure_port(address)
        except RuntimeError as exc:
            raise _port_taken(address) from exc
    await server.start()
    logger.info(
        "Open Inference Protocol gRPC service listening on %s (at most %d connections, idle "
        "ones closed after %g s, %d calls at once)",
        address,
        settings.grpc_max_connections,
        settings.grpc_max_connection_idle_seconds,
        settings.grpc_max_concurrent_rpcs,
    )
    return server


def _port_taken(address: str) -> RuntimeError:
    return RuntimeError(
        f"the gRPC service cannot listen on {address}: is another process using the port? "
        "Set DIGITS_GRPC_PORT (and DIGITS_GRPC_HOST) to a free address."
    )


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
