"""Structured logs: one JSON object per line, or a readable console form.

Every JSON line carries timestamp (RFC 3339, UTC, milliseconds), level
(ERROR, WARN, INFO, DEBUG), message, service, version, region and trace_id;
user_id and duration_ms appear where they apply. Events not tied to one
message carry the trace id of the process run, so that one run's lifecycle
can be found with a single query. Lines go to stdout and, when configured,
to a file that `LogSink.reopen` reopens after logrotate has moved it.
"""

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import structlog
import structlog.tracebacks

from relay import __version__

SERVICE = "yaok-relay"
_LEVEL_NAMES = {
    "critical": "ERROR",
    "exception": "ERROR",
    "error": "ERROR",
    "warning": "WARN",
    "warn": "WARN",
    "info": "INFO",
    "debug": "DEBUG",
}
_STDLIB_LEVELS = {
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG,
}
_FIRST_KEYS = (
    "timestamp",
    "level",
    "message",
    "service",
    "version",
    "region",
    "trace_id",
)


class LogSink:
    """Writes rendered lines to stdout and an optional file, reopened on demand.

    A lock keeps a reopen from interleaving with a write from uvicorn's or
    aiosqlite's threads.
    """

    def __init__(self, path: Path | None, stream: TextIO | None = None) -> None:
        self.path = path
        self.stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        if path is not None:
            self._file = self._open(path)

    @staticmethod
    def _open(path: Path) -> TextIO:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def write_line(self, line: str) -> None:
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()
            if self._file is not None:
                self._file.write(line + "\n")

    def reopen(self) -> None:
        """Close and reopen the log file, as logrotate's postrotate asks."""
        if self.path is None:
            return
        with self._lock:
            if self._file is not None:
                self._file.close()
            self._file = self._open(self.path)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    # structlog calls the method named after the level on its logger.
    def msg(self, message: str) -> None:
        self.write_line(message)

    debug = info = warning = warn = error = critical = exception = msg


class _SinkFactory:
    def __init__(self, sink: LogSink) -> None:
        self.sink = sink

    def __call__(self, *args: Any) -> LogSink:
        return self.sink


def _timestamp(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    now_ns = time.time_ns()
    seconds, nanos = divmod(now_ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    event["timestamp"] = f"{stamp}.{nanos // 1_000_000:03d}Z"
    return event


def _level(_: Any, method_name: str, event: dict[str, Any]) -> dict[str, Any]:
    event["level"] = _LEVEL_NAMES.get(method_name, method_name.upper())
    return event


class _Identity:
    """Adds the fields every line carries, with the run's trace id as default."""

    def __init__(self, region: str) -> None:
        self.fields = {"service": SERVICE, "version": __version__, "region": region}
        self.run_trace_id = os.urandom(8).hex()

    def __call__(self, _: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        event.pop("color_message", None)  # uvicorn's ANSI copy of the message
        event.update(self.fields)
        if not event.get("trace_id"):
            event["trace_id"] = self.run_trace_id
        return event


def _ordered(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    ordered = {key: event.pop(key) for key in _FIRST_KEYS if key in event}
    ordered.update(event)
    return ordered


def configure_logging(
    level: str, log_format: str, region: str, log_file: Path | None = None
) -> LogSink:
    """Configure structlog and the standard library logging; return the sink."""
    sink = LogSink(log_file)
    enrich: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _timestamp,
        _level,
        _Identity(region),
        structlog.processors.EventRenamer("message"),
        # Locals could hold keys, so tracebacks show frames without them.
        structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        ),
    ]
    if log_format == "console":
        render: list[Any] = [structlog.dev.ConsoleRenderer(event_key="message")]
    else:
        render = [_ordered, structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=[*enrich, *render],
        wrapper_class=structlog.make_filtering_bound_logger(_STDLIB_LEVELS[level]),
        logger_factory=_SinkFactory(sink),
        cache_logger_on_first_use=True,
    )
    _route_stdlib_logging(sink, enrich, render, level)
    return sink


class _SinkHandler(logging.Handler):
    def __init__(self, sink: LogSink) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.write_line(self.format(record))
        except Exception:
            self.handleError(record)


def _route_stdlib_logging(
    sink: LogSink, enrich: list[Any], render: list[Any], level: str
) -> None:
    """Send uvicorn's and other libraries' records through the same renderer."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *enrich],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
    )
    handler = _SinkHandler(sink)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(_STDLIB_LEVELS[level], logging.INFO))
    # uvicorn's INFO lines repeat what relay_started and relay_stopped say.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
        logger.setLevel(logging.WARNING)
