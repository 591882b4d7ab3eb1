"""Request ids and log lines: ids taken or generated, echoed, and on every line of the request;
logs that cannot be forged; uvicorn's and TensorFlow's lines in the service's format; and a real
server whose start-up output holds nothing but the service's own lines."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.core.logging import (
    TextFormatter,
    _native_stderr_filtered,
    configure_logging,
    escape_controls,
)
from app.core.request_id import MAX_LENGTH, accepted_request_id
from app.main import create_app
from harness.servers import (
    HOST,
    LAUNCHER,
    READY_TIMEOUT_SECONDS,
    REPO,
    free_port,
    log_tail,
    server_environment,
    wait_until_ready,
)
from tests.app.conftest import FIXTURE_MODEL_ENV, ModelsDir, make_settings

HEX_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def json_client(models: ModelsDir) -> Iterator[TestClient]:
    """An app logging JSON, serving a model that always answers 1."""
    models.add(1, digit=1)
    with TestClient(create_app(make_settings(models.path, log_format="json"))) as test_client:
        yield test_client
    configure_logging("INFO", "text")


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# --- request ids ---------------------------------------------------------------------------


def test_a_safe_incoming_request_id_is_echoed(client: TestClient) -> None:
    for incoming in ["abc-123", "0f8fad5b-d9cb-469f-a165-70867728950e", "x" * MAX_LENGTH]:
        response = client.get("/health/live", headers={"X-Request-ID": incoming})
        assert response.headers["X-Request-ID"] == incoming


def test_a_missing_request_id_is_generated_and_differs_per_request(client: TestClient) -> None:
    first = client.get("/health/live").headers["X-Request-ID"]
    second = client.get("/health/live").headers["X-Request-ID"]
    assert HEX_ID.fullmatch(first), first
    assert HEX_ID.fullmatch(second), second
    assert first != second


@pytest.mark.parametrize(
    "incoming",
    ["x" * (MAX_LENGTH + 1), "has space", "semi;colon", 'quote"d', "<script>", "é", ""],
)
def test_an_unsafe_request_id_is_replaced(client: TestClient, incoming: str) -> None:
    response = client.get("/health/live", headers={"X-Request-ID": incoming.encode("utf-8")})
    assert HEX_ID.fullmatch(response.headers["X-Request-ID"])


def test_control_characters_never_pass_as_a_request_id() -> None:
    assert accepted_request_id(b"ok\nforged") != "ok\nforged"
    assert accepted_request_id(b"ok\rforged") != "ok\rforged"
    assert accepted_request_id(b"ok") == "ok"


def test_error_answers_carry_the_request_id_too(client: TestClient) -> None:
    response = client.get("/no-such-page", headers={"X-Request-ID": "req-404"})
    assert response.status_code == 404
    assert response.headers["X-Request-ID"] == "req-404"
    response = client.post("/predict", headers={"X-Request-ID": "req-422"})
    assert response.status_code == 422
    assert response.headers["X-Request-ID"] == "req-422"


def test_every_log_line_of_a_request_carries_its_id(
    json_client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    app = json_client.app

    async def chatty() -> dict[str, str]:
        logging.getLogger("app.somewhere").warning("service line")
        logging.getLogger("uvicorn.error").warning("uvicorn line")
        logging.getLogger("tensorflow").warning("tensorflow line")
        return {}

    app.add_api_route("/chatty", chatty)  # type: ignore[attr-defined]
    capsys.readouterr()
    json_client.get("/chatty", headers={"X-Request-ID": "trace-me-1"})
    lines = _json_lines(capsys.readouterr().err)
    by_message = {line["message"]: line for line in lines}
    for message in ["service line", "uvicorn line", "tensorflow line"]:
        assert by_message[message]["request_id"] == "trace-me-1", lines
    [access] = [line for line in lines if line["logger"] == "app.access"]
    assert access["request_id"] == "trace-me-1"
    # Outside a request there is no id.
    logging.getLogger("app.somewhere").warning("idle line")
    [idle] = _json_lines(capsys.readouterr().err)
    assert "request_id" not in idle


def test_every_log_line_of_a_traced_request_carries_its_trace_and_span_ids(
    models: ModelsDir, capsys: pytest.CaptureFixture[str]
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    models.add(1, digit=1)
    settings = make_settings(models.path, log_format="json")
    app = create_app(settings, tracer_provider=provider)

    async def chatty() -> dict[str, str]:
        logging.getLogger("app.somewhere").warning("service line")
        logging.getLogger("uvicorn.error").warning("uvicorn line")
        return {}

    app.add_api_route("/chatty", chatty)
    try:
        with TestClient(app) as client:
            capsys.readouterr()
            client.get("/chatty", headers={"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"})
            lines = _json_lines(capsys.readouterr().err)
    finally:
        configure_logging("INFO", "text")
    [span] = [s for s in exporter.get_finished_spans() if s.name == "GET /chatty"]
    assert span.context is not None
    trace_id, span_id = format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")
    assert trace_id == "ab" * 16
    by_message = {line["message"]: line for line in lines}
    [access] = [line for line in lines if line["logger"] == "app.access"]
    for line in [by_message["service line"], by_message["uvicorn line"], access]:
        assert (line["trace_id"], line["span_id"]) == (trace_id, span_id), line


def test_lines_outside_a_span_have_no_trace_ids(
    json_client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    json_client.get("/health/live", headers={"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"})
    logging.getLogger("app.somewhere").warning("idle line")
    lines = _json_lines(capsys.readouterr().err)
    assert lines
    assert not [line for line in lines if "trace_id" in line or "span_id" in line], lines


def test_a_text_line_in_a_span_names_its_trace_and_span(
    capsys: pytest.CaptureFixture[str],
) -> None:
    tracer = TracerProvider().get_tracer("test")
    configure_logging("INFO", "text")
    capsys.readouterr()
    with tracer.start_as_current_span("work") as span:
        logging.getLogger("app.somewhere").warning("inside")
    logging.getLogger("app.somewhere").warning("outside")
    inside, outside = capsys.readouterr().err.splitlines()
    context = span.get_span_context()
    ids = f"trace_id={context.trace_id:032x} span_id={context.span_id:016x}"
    assert inside.endswith(f"[- {ids}] app.somewhere: inside"), inside
    assert outside.endswith("[-] app.somewhere: outside"), outside


def test_uvicorns_default_handlers_give_way_to_the_services(
    models: ModelsDir, capsys: pytest.CaptureFixture[str]
) -> None:
    """As under `uvicorn --factory`: uvicorn's default config is in place, then the app is built."""
    from uvicorn.logging import AccessFormatter, DefaultFormatter

    uvicorn_out = io.StringIO()
    installed = []
    for name, formatter in [
        ("uvicorn", DefaultFormatter("%(levelprefix)s %(message)s")),
        ("uvicorn.access", AccessFormatter("%(levelprefix)s %(message)s")),
    ]:
        handler = logging.StreamHandler(uvicorn_out)
        handler.setFormatter(formatter)
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).propagate = False
        installed.append((name, handler))
    logging.getLogger("uvicorn").setLevel(logging.INFO)  # uvicorn's --log-level
    try:
        create_app(make_settings(models.path, log_format="json"))
        capsys.readouterr()
        logging.getLogger("uvicorn.error").info("Started server process [1]")
        logging.getLogger("uvicorn.access").warning("an access warning")
        lines = _json_lines(capsys.readouterr().err)
        assert [(line["logger"], line["message"]) for line in lines] == [
            ("uvicorn.error", "Started server process [1]"),
            ("uvicorn.access", "an access warning"),
        ]
        assert uvicorn_out.getvalue() == ""
    finally:
        for name, handler in installed:
            logging.getLogger(name).removeHandler(handler)
        logging.getLogger("uvicorn").setLevel(logging.NOTSET)
        configure_logging("INFO", "text")


# --- lines that cannot be forged -----------------------------------------------------------


def test_control_characters_are_escaped() -> None:
    assert escape_controls("plain text é ü") == "plain text é ü"
    assert escape_controls("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert escape_controls("\x1b[31mred\x00") == "\\x1b[31mred\\x00"
    assert escape_controls("x\u2028y\x85z") == "x\\u2028y\\x85z"


def test_a_text_record_is_one_line_whatever_its_arguments() -> None:
    record = logging.makeLogRecord(
        {
            "name": "app.access",
            "levelname": "INFO",
            "msg": '"%s %s" %d',
            "args": ("GET", "/x\n2026-01-01 00:00:00,000 INFO    [-] app: forged", 404),
            "request_id": "r1",
        }
    )
    line = TextFormatter().format(record)
    assert "\n" not in line
    assert line.endswith(
        '[r1] app.access: "GET /x\\n2026-01-01 00:00:00,000 INFO    [-] app: forged" 404'
    )


def test_a_traceback_continues_only_on_indented_lines() -> None:
    try:
        raise ValueError("bad\ninput\x1b")
    except ValueError:
        record = logging.makeLogRecord(
            {"name": "app.errors", "levelname": "ERROR", "msg": "failed", "request_id": "-"}
        )
        record.exc_info = sys.exc_info()
    first, *rest = TextFormatter().format(record).split("\n")
    assert first.endswith("[-] app.errors: failed")
    assert rest
    assert all(line.startswith("    ") for line in rest), rest
    assert any("ValueError: bad" in line for line in rest)
    assert not any("\x1b" in line for line in rest)


def test_the_native_line_filter_drops_only_lines_below_the_level(
    capfd: pytest.CaptureFixture[str],
) -> None:
    error = b"E0000 00:00:1795969500.980723   10205 cuda_platform.cc:52] failed call to cuInit\n"
    with _native_stderr_filtered(b"IW"):
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are...\n")
        os.write(2, b"I0000 00:00:1795969496.407566   10205 port.cc:153] oneDNN custom ops\n")
        os.write(2, b"W0000 00:00:1795969496.407566   10205 other.cc:1] a warning\n")
        os.write(2, error)
        os.write(2, b"a line of the service\n")
        os.write(2, b"no newline at the end")
    assert capfd.readouterr().err == (
        error.decode() + "a line of the service\nno newline at the end"
    )


# --- a real server: its own lines only, JSON throughout ------------------------------------


def _start_server(
    models: ModelsDir, log_path: Path, fmt: str
) -> tuple[subprocess.Popen[bytes], str]:
    """A real uvicorn server, started WITHOUT TF_CPP_MIN_LOG_LEVEL (the service's default)."""
    models.add(1, digit=1)
    env = server_environment(models.path, {"DIGITS_LOG_FORMAT": fmt, **FIXTURE_MODEL_ENV})
    del env["TF_CPP_MIN_LOG_LEVEL"]
    port = free_port()
    command = [sys.executable, "-m", LAUNCHER, "--host", HOST, "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{HOST}:{port}"
    try:
        wait_until_ready(f"{url}/health/ready", process, READY_TIMEOUT_SECONDS, log_path)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process, url


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.mark.slow
def test_a_real_server_logs_json_only_without_tensorflow_noise(
    models: ModelsDir, tmp_path: Path
) -> None:
    log_path = tmp_path / "server.log"
    process, url = _start_server(models, log_path, "json")
    try:
        response = httpx.get(
            f"{url}/forged%0A2026-01-01%20INFO%20app:%20fake", headers={"X-Request-ID": "real-1"}
        )
        assert response.status_code == 404
        assert response.headers["X-Request-ID"] == "real-1"
        response = httpx.get(f"{url}/health/live")
        generated = response.headers["X-Request-ID"]
        assert HEX_ID.fullmatch(generated)
        httpx.get(f"{url}/health/live", headers={"X-Request-ID": "bad id"})
    finally:
        _stop(process)

    text = log_path.read_text(errors="replace")
    for noise in ["cuInit", "oneDNN", "cuda drivers", "absl::InitializeLog", "cpu_feature_guard"]:
        assert noise not in text, log_tail(log_path)
    entries = []
    for line in text.splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}\n{log_tail(log_path)}")
    messages = [e["message"] for e in entries if e["logger"] == "uvicorn.error"]
    assert any(m.startswith("Uvicorn running on") for m in messages), messages
    assert any(m.startswith("Finished server process") for m in messages), messages
    access = [e for e in entries if e["logger"] == "app.access"]
    forged = [e for e in access if e.get("request_id") == "real-1"]
    assert len(forged) == 1, access
    assert forged[0]["path"] == "/forged\n2026-01-01 INFO app: fake"
    assert any(e.get("request_id") == generated for e in access)
    assert not any(e.get("request_id") == "bad id" for e in access)


@pytest.mark.slow
def test_a_real_server_in_text_format_writes_one_line_per_record(
    models: ModelsDir, tmp_path: Path
) -> None:
    log_path = tmp_path / "server.log"
    process, url = _start_server(models, log_path, "text")
    try:
        forged = "/x%0A2026-01-01%2000:00:00,000%20INFO%20%20%20%20[-]%20app:%20fake"
        assert httpx.get(f"{url}{forged}").status_code == 404
    finally:
        _stop(process)
    lines = log_path.read_text(errors="replace").splitlines()
    record_start = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ +\[[^\]]+\] \S+: ")
    for line in lines:
        assert record_start.match(line), f"{line!r} starts no record\n{log_tail(log_path)}"
    assert any("/x\\n2026-01-01 00:00:00,000 INFO" in line for line in lines), log_tail(log_path)
    assert any("uvicorn.error: Uvicorn running on" in line for line in lines)
