"""OpenTelemetry tracing: a server span per request, child spans for each stage and the model
call (recorded from the inference worker's thread), W3C traceparent honoured; off by default.

Spans are collected with the SDK's InMemorySpanExporter; the environment's configuration is
checked with the SDK's console exporter.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any

import grpc
import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from tritonclient.grpc import service_pb2, service_pb2_grpc

from app.core import tracing
from app.core.tracing import (
    TracingMiddleware,
    tracer_provider_from_environment,
    tracer_provider_of,
)
from app.main import create_app
from harness.servers import REPO, free_port, server_environment
from tests.app.api.test_recognize import three_digit_png
from tests.app.conftest import FIXTURE_MODEL_ENV, ModelsDir, encode, make_settings
from tests.app.reading.test_segmentation import as_photo, draw_string, seven

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"

OTEL_VARIABLES = [
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
]


@pytest.fixture(autouse=True)
def no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever this machine's shell says, each test starts with tracing unconfigured."""
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced(models: ModelsDir, exporter: InMemorySpanExporter) -> Iterator[TestClient]:
    """An app tracing into ``exporter``, serving a model that always answers 1."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    models.add(1, digit=1)
    with TestClient(create_app(make_settings(models.path), tracer_provider=provider)) as client:
        exporter.clear()  # start-up's own requests, if any
        yield client


def digit_png() -> bytes:
    ink, _ = draw_string([seven])
    return encode(as_photo(ink))


def server_span(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    [span] = [s for s in spans if s.kind == SpanKind.SERVER and s.name == name]
    return span


def children(spans: tuple[ReadableSpan, ...], parent: ReadableSpan) -> dict[str, ReadableSpan]:
    assert parent.context is not None
    found = {}
    for span in spans:
        if span.parent is not None and span.parent.span_id == parent.context.span_id:
            assert span.context is not None
            assert span.context.trace_id == parent.context.trace_id
            assert span.name not in found, f"two {span.name} spans"
            found[span.name] = span
    return found


def test_predict_has_a_server_span_with_stage_and_model_spans(
    traced: TestClient, exporter: InMemorySpanExporter
) -> None:
    response = traced.post("/predict", files={"file": ("d.png", digit_png())})
    assert response.status_code == 200
    spans = exporter.get_finished_spans()
    root = server_span(spans, "POST /predict")
    assert root.parent is None
    assert root.attributes is not None
    assert root.attributes["http.route"] == "/predict"
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["http.request.header.x-request-id"] == (
        response.headers["X-Request-ID"],
    )
    stages = children(spans, root)
    assert set(stages) == {"decode_normalize", "model.predict"}
    model = stages["model.predict"]
    assert model.attributes is not None
    assert model.attributes["digits.batch.images"] == 1
    assert model.attributes["digits.batch.requests"] == 1
    assert model.attributes["digits.model.version"] == 1
    # The model span was recorded from the worker thread inside the request's lifetime.
    assert root.start_time is not None
    assert root.end_time is not None
    assert model.start_time is not None
    assert model.end_time is not None
    assert root.start_time <= model.start_time <= model.end_time <= root.end_time


def test_recognize_has_decode_segmentation_normalize_and_model_spans(
    traced: TestClient, exporter: InMemorySpanExporter
) -> None:
    response = traced.post("/recognize", files={"file": ("c.png", three_digit_png())})
    assert response.status_code == 200, response.text
    spans = exporter.get_finished_spans()
    root = server_span(spans, "POST /recognize")
    stages = children(spans, root)
    assert {"decode", "segmentation", "normalize", "model.predict", "reading"} <= set(stages)
    normalize, model = stages["normalize"], stages["model.predict"]
    assert normalize.attributes is not None
    assert model.attributes is not None
    # Every candidate the segmentation found went to the model in one call.
    assert model.attributes["digits.batch.images"] == normalize.attributes["digits.candidates"]
    assert model.attributes["digits.batch.images"] >= 3
    order = [stages[name].start_time or 0 for name in ["decode", "segmentation", "normalize"]]
    assert order == sorted(order)


def test_batch_model_span_counts_only_the_readable_images(
    traced: TestClient, exporter: InMemorySpanExporter
) -> None:
    files = [("files", ("a.png", digit_png())), ("files", ("b.png", b"junk"))] * 3
    assert traced.post("/predict/batch", files=files).status_code == 200
    spans = exporter.get_finished_spans()
    stages = children(spans, server_span(spans, "POST /predict/batch"))
    assert stages["model.predict"].attributes is not None
    assert stages["model.predict"].attributes["digits.batch.images"] == 3
    assert stages["decode_normalize"].attributes == {"digits.images": 6}


def test_a_w3c_traceparent_becomes_the_parent(
    traced: TestClient, exporter: InMemorySpanExporter
) -> None:
    traced.get("/health/live", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    root = server_span(exporter.get_finished_spans(), "GET /health/live")
    assert root.context is not None
    assert root.parent is not None
    assert format(root.context.trace_id, "032x") == TRACE_ID
    assert format(root.parent.span_id, "016x") == PARENT_ID
    assert root.parent.is_remote


def test_a_malformed_traceparent_starts_a_new_trace(
    traced: TestClient, exporter: InMemorySpanExporter
) -> None:
    traced.get("/health/live", headers={"traceparent": "00-not-a-trace-01"})
    root = server_span(exporter.get_finished_spans(), "GET /health/live")
    assert root.parent is None


def test_failed_stages_and_unmatched_paths_are_recorded(
    traced: TestClient, exporter: InMemorySpanExporter
) -> None:
    assert traced.post("/predict", files={"file": ("d.png", b"junk")}).status_code == 400
    assert traced.get("/nowhere").status_code == 404
    spans = exporter.get_finished_spans()
    root = server_span(spans, "POST /predict")
    assert root.attributes is not None
    assert root.attributes["http.response.status_code"] == 400
    stage = children(spans, root)["decode_normalize"]
    assert stage.status.status_code == StatusCode.ERROR
    assert "model.predict" not in children(spans, root)
    [unmatched] = [s for s in spans if s.name == "GET"]
    assert unmatched.attributes is not None
    assert unmatched.attributes["http.response.status_code"] == 404


# --- gRPC: a span per call ---------------------------------------------------------------------

GRPC_SERVICE = "inference.GRPCInferenceService"


@pytest.fixture
def traced_grpc(models: ModelsDir, exporter: InMemorySpanExporter) -> Iterator[Any]:
    """A stub on the gRPC port of an app tracing into ``exporter``."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    models.add(1, digit=1)
    port = free_port()
    settings = make_settings(models.path, grpc_port=port)
    with (
        TestClient(create_app(settings, tracer_provider=provider)),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        exporter.clear()
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def grpc_span(exporter: InMemorySpanExporter, method: str) -> ReadableSpan:
    """The server span of the one call to ``method`` (it may end just after the answer left)."""
    deadline = time.monotonic() + 5
    while True:
        spans = [s for s in exporter.get_finished_spans() if s.name == f"{GRPC_SERVICE}/{method}"]
        if spans or time.monotonic() > deadline:
            [span] = spans
            assert span.kind == SpanKind.SERVER
            return span
        time.sleep(0.01)


def infer_request(images: int = 1) -> Any:
    request = service_pb2.ModelInferRequest(model_name="mnist")
    request.inputs.add(name="images", datatype="UINT8", shape=[images, 28, 28])
    request.raw_input_contents.append(bytes(784 * images))
    return request


def test_a_grpc_call_has_a_server_span_with_the_model_span(
    traced_grpc: Any, exporter: InMemorySpanExporter
) -> None:
    metadata = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"), ("x-request-id", "grpc-7"))
    traced_grpc.ModelInfer(infer_request(2), metadata=metadata)
    root = grpc_span(exporter, "ModelInfer")
    assert root.context is not None
    assert root.parent is not None
    assert format(root.context.trace_id, "032x") == TRACE_ID
    assert format(root.parent.span_id, "016x") == PARENT_ID
    assert dict(root.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": GRPC_SERVICE,
        "rpc.method": "ModelInfer",
        "rpc.grpc.status_code": 0,
        "rpc.grpc.request.metadata.x-request-id": ("grpc-7",),
    }
    assert root.status.status_code == StatusCode.UNSET
    model = children(exporter.get_finished_spans(), root)["model.predict"]
    assert model.attributes is not None
    assert model.attributes["digits.batch.images"] == 2


def test_a_grpc_calls_status_is_on_its_span(
    traced_grpc: Any, exporter: InMemorySpanExporter
) -> None:
    """A refusal is the client's error (status unset); an unimplemented method the server's."""
    with pytest.raises(grpc.RpcError):
        traced_grpc.ModelInfer(service_pb2.ModelInferRequest(model_name="mnist"))
    refused = grpc_span(exporter, "ModelInfer")
    assert refused.parent is None
    assert (refused.attributes or {})[
        "rpc.grpc.status_code"
    ] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert refused.status.status_code == StatusCode.UNSET
    assert not refused.events  # an abort is an answer, not an exception of the server
    with pytest.raises(grpc.RpcError):
        traced_grpc.RepositoryIndex(service_pb2.RepositoryIndexRequest())
    missing = grpc_span(exporter, "RepositoryIndex")
    assert (missing.attributes or {})[
        "rpc.grpc.status_code"
    ] == grpc.StatusCode.UNIMPLEMENTED.value[0]
    assert missing.status.status_code == StatusCode.ERROR
    assert traced_grpc.ServerLive(service_pb2.ServerLiveRequest()).live
    assert (grpc_span(exporter, "ServerLive").attributes or {})["rpc.grpc.status_code"] == 0


def test_grpc_calls_make_no_spans_with_tracing_off(models: ModelsDir) -> None:
    models.add(1, digit=1)
    port = free_port()
    with TestClient(create_app(make_settings(models.path, grpc_port=port))) as client:
        assert tracer_provider_of(client.app) is None  # type: ignore[arg-type]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ModelInfer(infer_request()).model_version == "1"


# --- off by default, on by the standard variables ------------------------------------------


def test_tracing_is_off_without_otel_variables(client: TestClient) -> None:
    assert tracer_provider_from_environment() is None
    middleware = [m.cls for m in client.app.user_middleware]  # type: ignore[attr-defined]
    assert TracingMiddleware not in middleware
    # No span objects on the request path: the stage helper is a shared no-op.
    assert tracing.child_span("decode") is tracing.child_span("normalize")
    assert tracing.capture() is None


@pytest.mark.parametrize(
    "variables",
    [
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "TRUE"},
    ],
)
def test_tracing_stays_off_when_the_variables_say_so(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert tracer_provider_from_environment() is None


def test_an_otlp_endpoint_turns_tracing_on_or_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    logger = logging.getLogger("app")
    logger.addHandler(caplog.handler)
    try:
        provider = tracer_provider_from_environment()
    finally:
        logger.removeHandler(caplog.handler)
    if entry_points(group="opentelemetry_traces_exporter", name="otlp_proto_http"):
        assert provider is not None
        provider.shutdown()
    else:
        assert provider is None
        assert any("mnist-digits[otlp]" in r.getMessage() for r in caplog.records)


CONSOLE_SCRIPT = """
import io
from fastapi.testclient import TestClient
from PIL import Image
from app.main import create_app

image = Image.new("L", (28, 28))
image.paste(255, (10, 4, 16, 24))
png = io.BytesIO()
image.save(png, "PNG")
with TestClient(create_app()) as client:
    status = client.post("/predict", files={"file": ("d.png", png.getvalue())}).status_code
    assert status == 200, status
"""


@pytest.mark.slow
def test_the_console_exporter_receives_the_requests_spans(models: ModelsDir) -> None:
    """Configured by the environment alone, in a process of its own (as under uvicorn)."""
    models.add(1, digit=1)
    env = server_environment(
        models.path,
        {
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_SERVICE_NAME": "digits-under-test",
            **FIXTURE_MODEL_ENV,
        },
    )
    done = subprocess.run(
        [sys.executable, "-c", CONSOLE_SCRIPT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # The lifespan's end shut the provider down, which exported what was buffered.
    spans = [json.loads(chunk) for chunk in _json_objects(done.stdout)]
    names = {span["name"] for span in spans}
    assert {"POST /predict", "decode_normalize", "model.predict"} <= names, names
    assert {span["resource"]["attributes"]["service.name"] for span in spans} == {
        "digits-under-test"
    }


def _json_objects(text: str) -> list[str]:
    """Split the console exporter's output (indented JSON objects, one after another)."""
    decoder = json.JSONDecoder()
    objects, index = [], 0
    while (start := text.find("{", index)) != -1:
        _, end = decoder.raw_decode(text, start)
        objects.append(text[start:end])
        index = end
    return objects
