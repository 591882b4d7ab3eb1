"""Hostile requests and connections against the raw-tensor protocols (the Open Inference
Protocol over REST and gRPC), each of which once cost the service far more than its size.

Shared by the tests (scaled down) and measurements (full size):

* an infer request naming the same output thousands of times: the answer was built once per
  entry, on the event loop (0.67 MiB of request, 973 MiB of answer over REST);
* connections opened to the gRPC port and left idle, raw (no HTTP/2 preface) or with an HTTP/2
  session and no call: every one was kept, until the process ran out of descriptors;
* calls of the protocol's methods the server does not implement: an ERROR and a traceback in
  the log for each.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from typing import Any, Final

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

__all__ = [
    "HTTP2_PREFACE",
    "SERVED_METHODS",
    "call_method",
    "idle_connections",
    "open_count",
    "open_idle",
    "repeated_outputs_grpc",
    "repeated_outputs_rest",
    "unserved_methods",
]

#: What an HTTP/2 client sends first: the connection preface and an empty SETTINGS frame.
HTTP2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
#: The Open Inference Protocol's header giving the JSON's length (binary tensor data extension).
HEADER_LENGTH: Final = "Inference-Header-Content-Length"


def repeated_outputs_rest(
    images: np.ndarray, name: str = "probabilities", times: int = 20_000
) -> tuple[bytes, dict[str, str]]:
    """An Open Inference Protocol REST infer body naming output ``name`` ``times`` times, the
    images as binary tensor data, and its headers (without the API key)."""
    request: dict[str, Any] = {
        "inputs": [
            {
                "name": "images",
                "datatype": "UINT8",
                "shape": list(images.shape),
                "parameters": {"binary_data_size": images.nbytes},
            }
        ],
        "outputs": [{"name": name}] * times,
    }
    head = json.dumps(request).encode()
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
    return head + images.astype(np.uint8).tobytes(), headers


def repeated_outputs_grpc(
    images: np.ndarray, name: str = "probabilities", times: int = 20_000
) -> Any:
    """A gRPC ``ModelInferRequest`` naming output ``name`` ``times`` times, raw images."""
    request = service_pb2.ModelInferRequest(model_name="mnist")
    request.inputs.add(name="images", datatype="UINT8", shape=list(images.shape))
    request.raw_input_contents.append(images.astype(np.uint8).tobytes())
    for _ in range(times):
        request.outputs.add(name=name)
    return request


@contextlib.contextmanager
def idle_connections(
    host: str, port: int, count: int, *, http2: bool = False
) -> Iterator[list[socket.socket]]:
    """``count`` connections to ``host:port`` that then send nothing: raw TCP, or (``http2``)
    with the HTTP/2 preface sent, so the server holds a session with no call. Closed on exit.

    A connection the server refuses at once is still returned (it reads as closed).
    """
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection((host, port), timeout=5)
            opened.append(sock)
            if http2:
                with contextlib.suppress(OSError):
                    sock.sendall(HTTP2_PREFACE)
        yield opened
    finally:
        for sock in opened:
            sock.close()


def open_count(sockets: list[socket.socket]) -> int:
    """How many of ``sockets`` the server still holds open (what it sent meanwhile is read and
    dropped; end of stream or a reset means closed)."""
    return sum(_still_open(sock) for sock in sockets)


def _still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        while True:
            try:
                if not sock.recv(65536):
                    return False
            except BlockingIOError:
                return True
            except OSError:
                return False
    finally:
        sock.setblocking(True)


def open_idle(
    host: str, port: int, count: int, *, http2: bool = False
) -> tuple[list[socket.socket], int]:
    """Like :func:`idle_connections`, for thousands at once: the connections opened (the
    caller closes them) and how many could not be opened at all (refused, or not accepted
    within 5 s), instead of stopping at the first that fails."""
    opened: list[socket.socket] = []
    failed = 0
    for _ in range(count):
        try:
            sock = socket.create_connection((host, port), timeout=5)
        except OSError:
            failed += 1
            continue
        opened.append(sock)
        if http2:
            with contextlib.suppress(OSError):
                sock.sendall(HTTP2_PREFACE)
    return opened, failed


#: The Open Inference Protocol's gRPC service, as tritonclient describes it.
SERVICE: Final = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
#: The methods the service serves (app.protocols.v2_grpc.IMPLEMENTED); the others answer
#: UNIMPLEMENTED.
SERVED_METHODS: Final = (
    "ServerLive",
    "ServerReady",
    "ServerMetadata",
    "ModelReady",
    "ModelMetadata",
    "ModelInfer",
)


def unserved_methods() -> list[str]:
    """The protocol's methods the service does not serve (ModelStreamInfer among them)."""
    return [m.name for m in SERVICE.methods if m.name not in SERVED_METHODS]


def call_method(channel: grpc.Channel, name: str, timeout: float = 10.0) -> grpc.StatusCode:
    """Call method ``name`` with an empty request of its type; the status it ends with."""
    method = SERVICE.methods_by_name[name]
    request = getattr(service_pb2, method.input_type.name)()
    stub_method = getattr(service_pb2_grpc.GRPCInferenceServiceStub(channel), name)
    try:
        if method.client_streaming:
            for _ in stub_method(iter([request]), timeout=timeout):
                pass
        else:
            stub_method(request, timeout=timeout)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK
