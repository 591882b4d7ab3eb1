"""Logging for the service: plain text or one JSON object per line (``Settings.log_format``).

Every line carries the id of the request it was written for (``request_id``, see
:mod:`app.core.request_id`) and, while a traced request's span is current
(:mod:`app.core.tracing`), its ``trace_id`` and ``span_id`` in W3C's hex form, so a line leads
to its trace and a trace to its lines. The service's format applies to uvicorn's lines and
TensorFlow's Python lines too, so a JSON log is JSON throughout; TensorFlow's C++ start-up
chatter is silenced unless the operator asks for it (``TF_CPP_MIN_LOG_LEVEL``).

In text format every control character of a line is escaped: a request path holding ``%0A``
must not start a forged log line. Each record is one line; only a traceback continues on
further lines, each indented, so a line that starts at column 0 is always a real record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Final, Literal

from opentelemetry import trace

from app.core.request_id import current_request_id

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is data.
# ``color_message`` is uvicorn's copy of its message with ANSI colours.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}
TEXT_FORMAT: Final = "%(asctime)s %(levelname)-7s [%(request_id)s] %(name)s: %(message)s"
#: The text format of a line written while a span is current.
TRACED_TEXT_FORMAT: Final = (
    "%(asctime)s %(levelname)-7s [%(request_id)s trace_id=%(trace_id)s span_id=%(span_id)s] "
    "%(name)s: %(message)s"
)
NO_REQUEST: Final = "-"

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators some viewers split on.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``...)."""
    if text.isprintable():
        return text
    return _CONTROL.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (the current request's, or ``-``) to every record it sees, and
    ``trace_id`` and ``span_id`` while a span is current."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate the record; never drops it."""
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id() or NO_REQUEST
        if not hasattr(record, "trace_id"):
            span = trace.get_current_span().get_span_context()
            if span.is_valid:
                record.trace_id = trace.format_trace_id(span.trace_id)
                record.span_id = trace.format_span_id(span.span_id)
        return True


class TextFormatter(logging.Formatter):
    """The text format, with control characters escaped (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._traced = logging.PercentStyle(TRACED_TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        """The record's line, escaped; with the trace and span ids when it has them."""
        if hasattr(record, "trace_id") and hasattr(record, "span_id"):
            return escape_controls(self._traced.format(record))
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:  # noqa: N802
        """The traceback, indented and escaped line by line."""
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        """The stack, indented and escaped line by line."""
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("    " + escape_controls(line) for line in text.splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request id, message, the trace and span
    ids (while a span is current), extras, traceback."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as a JSON line."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if entry.get("request_id") == NO_REQUEST:
            del entry["request_id"]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _ServiceHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it).

    Also marks the handler this module installed, so reconfiguring replaces only it.
    """

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        """The stream is always the current ``sys.stderr``; assignments are ignored."""


#: Loggers uvicorn configures with handlers of its own (its default config, not --log-config).
_UVICORN_LOGGERS: Final = ("uvicorn", "uvicorn.access")


def configure_logging(level: str, fmt: Literal["text", "json"]) -> None:
    """Send the service's logs, uvicorn's and other libraries' to stderr in the given format.

    Safe to call repeatedly. The service's loggers (``app.*``) log at ``level``; uvicorn keeps
    its own levels (``--log-level``); other libraries log warnings and errors.
    """
    quiet_tensorflow()
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    service = logging.getLogger("app")
    _replace_handler(service, formatter)
    service.setLevel(level)
    # This handler is the service's output; a root handler installed by someone else would
    # print every line twice.
    service.propagate = False
    # Everyone else reaches the root logger. A handler there also keeps TensorFlow from
    # installing its own plain-text one on its logger when it is imported.
    _replace_handler(logging.getLogger(), formatter)
    for name in _UVICORN_LOGGERS:
        uvicorn_logger = logging.getLogger(name)
        defaults = [h for h in uvicorn_logger.handlers if _is_uvicorn_default(h)]
        if defaults:
            # uvicorn's default config (it ran before the app factory): its lines go through
            # the service's handler instead. A --log-config of the operator's own is kept.
            for handler in defaults:
                uvicorn_logger.removeHandler(handler)
            uvicorn_logger.propagate = True
    # TensorFlow imported before this call (tests) has its own stderr handler: drop it.
    tensorflow_logger = logging.getLogger("tensorflow")
    for handler in list(tensorflow_logger.handlers):
        if type(handler) is logging.StreamHandler:
            tensorflow_logger.removeHandler(handler)
    # The app writes its own access line with latency; uvicorn's would be a duplicate.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def _replace_handler(logger: logging.Logger, formatter: logging.Formatter) -> None:
    for old in [h for h in logger.handlers if isinstance(h, _ServiceHandler)]:
        logger.removeHandler(old)
    handler = _ServiceHandler()
    handler.setFormatter(formatter)
    handler.addFilter(RequestIdFilter())
    logger.addHandler(handler)


def _is_uvicorn_default(handler: logging.Handler) -> bool:
    formatter = handler.formatter
    return formatter is not None and type(formatter).__module__ == "uvicorn.logging"


# --- TensorFlow's C++ logging --------------------------------------------------------------

TF_LOG_LEVEL_VARIABLE: Final = "TF_CPP_MIN_LOG_LEVEL"
# The lines TensorFlow's native libraries print while they load, before they read
# TF_CPP_MIN_LOG_LEVEL: "I0000 00:00:1795969496.407566   10205 port.cc:153] oneDNN custom...".
_NATIVE_LINE: Final = re.compile(rb"^([IWE])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^\]]+\] ")
_NATIVE_PREAMBLE: Final = b"WARNING: All log messages before absl::InitializeLog()"
_SEVERITIES: Final = b"IWE"
_import_lock = threading.Lock()


def quiet_tensorflow() -> None:
    """Turn TensorFlow's C++ logging off unless the operator set ``TF_CPP_MIN_LOG_LEVEL``.

    Must run before TensorFlow is imported. Its start-up lines (a CUDA error on every machine
    without a GPU, CPU-feature and oneDNN notices, twice) say nothing about the service.
    """
    os.environ.setdefault(TF_LOG_LEVEL_VARIABLE, "3")


@contextlib.contextmanager
def native_startup_filtered() -> Iterator[None]:
    """Hold what a native library prints while it loads to ``TF_CPP_MIN_LOG_LEVEL``.

    TensorFlow's libraries print a few lines as they load, before they read the variable; the
    ones below its level are filtered out of the process's stderr for the duration (everything
    else written meanwhile passes through). The serving runtime imports TensorFlow inside it.
    """
    try:
        level = int(os.environ.get(TF_LOG_LEVEL_VARIABLE, "0"))
    except ValueError:
        level = 0
    if level <= 0:
        yield
        return
    # One at a time: two nested redirections of fd 2 could be undone out of order.
    with _import_lock, _native_stderr_filtered(_SEVERITIES[: min(level, 3)]):
        yield


@contextlib.contextmanager
def _native_stderr_filtered(dropped: bytes) -> Iterator[None]:
    """Route file descriptor 2 through a filter that drops native lines of these severities."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        read_end, write_end = os.pipe()
    except (OSError, ValueError):
        yield
        return

    def keep(line: bytes) -> bool:
        if line.startswith(_NATIVE_PREAMBLE):
            return False
        native = _NATIVE_LINE.match(line)
        return native is None or native.group(1) not in dropped

    def pump() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as source:
            pending = b""
            while chunk := source.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                _write_all(saved, b"".join(line + b"\n" for line in lines if keep(line)))
            if pending and keep(pending):
                _write_all(saved, pending)

    os.dup2(write_end, 2)
    os.close(write_end)
    pumping = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    pumping.start()
    try:
        yield
    finally:
        with contextlib.suppress(ValueError, OSError):
            sys.stderr.flush()
        # Closes the pipe's last write end: the pump reads to the end and stops.
        os.dup2(saved, 2)
        pumping.join(timeout=5)
        os.close(saved)


def _write_all(fd: int, data: bytes) -> None:
    """Write everything; on an error drop it, since the pump must keep draining the pipe (a
    full pipe would block every writer to stderr, the import included)."""
    view = memoryview(data)
    with contextlib.suppress(OSError):
        while view:
            view = view[os.write(fd, view) :]
