"""Structured logs: one JSON object per line, or a readable console form.

Every JSON line starts with timestamp (RFC 3339, UTC, milliseconds, "Z"),
level (ERROR, WARN, INFO, DEBUG), message, service, version, region and
trace_id. Then come user_id and duration_ms where they apply, and the
event's own fields. Events not tied to one message carry the trace id of
the process run, so that one run's lifecycle can be found with one query.

Lines go to stdout in the configured format (LOG_FORMAT=json or console)
and, when LOG_FILE is set, to that file, always as JSON because promtail
parses the file. `LogSink.reopen` reopens the file after logrotate has
moved it (the relay calls it on SIGUSR1).
"""

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import structlog
import structlog.tracebacks

from relay import __version__
from relay.config import ConfigError

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
_CONSOLE_HIDDEN = frozenset({"service", "version", "region"})
_CONSOLE_LEVEL_STYLES = {"ERROR": "\x1b[31m", "WARN": "\x1b[33m", "INFO": "\x1b[32m"}


def _render_json_line(event: dict[str, Any]) -> str:
    event = dict(event)
    event = _exception_to_dict(None, "", event)
    ordered = {key: event.pop(key) for key in _FIRST_KEYS if key in event}
    ordered.update(event)
    return _json_renderer(None, "", ordered)


# Locals could hold keys, so tracebacks show frames without them.
_exception_to_dict = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)
_json_renderer = structlog.processors.JSONRenderer()


class LogSink:
    """Writes each event to stdout and to an optional file, reopened on demand.

    stdout gets JSON or the console form; the file always gets JSON. A lock
    keeps a reopen from interleaving with a write from another thread. A
    failed write is counted in write_errors instead of raised, because a
    full disk must not stop the relay from serving.
    """

    def __init__(
        self,
        path: Path | None,
        stream: TextIO | None = None,
        console: bool = False,
    ) -> None:
        self.path = path
        self.stream = stream if stream is not None else sys.stdout
        self.write_errors = 0
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        self._console: Callable[..., str] | None = None
        if console:
            colors = hasattr(self.stream, "isatty") and self.stream.isatty()
            self._console = structlog.dev.ConsoleRenderer(
                colors=colors,
                event_key="message",
                level_styles=_CONSOLE_LEVEL_STYLES if colors else None,
                sort_keys=False,
            )
        if path is not None:
            try:
                self._file = self._open(path)
            except OSError as exc:
                raise ConfigError(
                    f"invalid configuration: LOG_FILE={str(path)!r}: cannot open "
                    f"it for appending ({exc.strerror or exc}); expected a "
                    "writable file path"
                ) from None

    @staticmethod
    def _open(path: Path) -> TextIO:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a", encoding="utf-8", buffering=1)

    def emit(self, event: dict[str, Any]) -> None:
        """Render an event and write it to stdout and the file."""
        json_line = _render_json_line(event)
        stream_line = json_line
        if self._console is not None:
            # The fields every line repeats would drown a terminal.
            readable = {k: v for k, v in event.items() if k not in _CONSOLE_HIDDEN}
            stream_line = self._console(None, "", readable)
        self.write_lines(stream_line, json_line)

    def write_lines(self, stream_line: str, file_line: str) -> None:
        with self._lock:
            try:
                self.stream.write(stream_line + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                self.write_errors += 1
            if self._file is not None:
                try:
                    self._file.write(file_line + "\n")
                except (OSError, ValueError):
                    self.write_errors += 1

    def reopen(self) -> str:
        """Open the log file again after logrotate moved it; return "" or the error.

        The new file is opened before the old one is closed, so when the
        open fails (a missing folder that cannot be created, a full disk)
        lines keep going to the old file.
        """
        if self.path is None:
            return "no LOG_FILE is configured"
        try:
            new_file = self._open(self.path)
        except OSError as exc:
            return str(exc.strerror or exc)
        with self._lock:
            old_file, self._file = self._file, new_file
        if old_file is not None:
            try:
                old_file.close()
            except OSError:
                self.write_errors += 1
        return ""

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                try:
                    self._file.close()
                except OSError:
                    self.write_errors += 1
                self._file = None

    # structlog calls the method named after the level on its logger, with
    # what the last processor returned: here the event dictionary.
    def msg(self, event: dict[str, Any]) -> None:
        self.emit(event)

    debug = info = warning = warn = error = critical = exception = msg


class LogThrottle:
    """Lets one line per key through each interval and counts the rest.

    Errors that repeat for every datagram (a failing disk, a bug hit by a
    flood) would otherwise fill the log. The line that gets through reports
    how many were held back since the previous one.
    """

    def __init__(
        self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held_back: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """Return the count held back since the last line, or None to skip this one."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held_back[key] = self._held_back.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held_back.pop(key, 0)


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


def _capture_exc_info(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    # exc_info=True means "the exception being handled"; capture it now,
    # while the except block still runs, because both renderers read it.
    if event.get("exc_info") is True:
        event["exc_info"] = sys.exc_info()
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


def _to_sink(_: Any, __: str, event: dict[str, Any]) -> tuple[tuple, dict]:
    return (event,), {}


def configure_logging(
    level: str,
    log_format: str,
    region: str,
    log_file: Path | None = None,
    stream: TextIO | None = None,
) -> LogSink:
    """Configure structlog and the standard library logging; return the sink.

    Raises ConfigError when log_file cannot be opened for appending.
    """
    sink = LogSink(log_file, stream, console=log_format == "console")
    enrich: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _timestamp,
        _level,
        _Identity(region),
        structlog.processors.EventRenamer("message"),
        _capture_exc_info,
    ]
    structlog.configure(
        processors=[*enrich, _to_sink],
        wrapper_class=structlog.make_filtering_bound_logger(_STDLIB_LEVELS[level]),
        logger_factory=_SinkFactory(sink),
        cache_logger_on_first_use=True,
    )
    _route_stdlib_logging(sink, enrich, level)
    return sink


_RECORD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime", "color_message"}


class _SinkHandler(logging.Handler):
    """Sends standard library records through the same processors as structlog."""

    def __init__(self, sink: LogSink, enrich: list[Any]) -> None:
        super().__init__()
        self.sink = sink
        self.enrich = enrich

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event: dict[str, Any] = {"event": record.getMessage()}
            for key, value in record.__dict__.items():
                if key not in _RECORD_ATTRIBUTES:
                    event[key] = value
            event["logger"] = record.name
            if record.exc_info:
                event["exc_info"] = record.exc_info
            method_name = record.levelname.lower()
            for processor in self.enrich:
                event = processor(None, method_name, event)
            self.sink.emit(event)
        except Exception:
            self.handleError(record)


def _route_stdlib_logging(sink: LogSink, enrich: list[Any], level: str) -> None:
    """Send uvicorn's and other libraries' records through the same renderers."""
    handler = _SinkHandler(sink, enrich)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(_STDLIB_LEVELS[level], logging.INFO))
    # uvicorn's INFO lines repeat what relay_started and relay_stopped say.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
        logger.setLevel(logging.WARNING)
