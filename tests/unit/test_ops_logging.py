"""Log rendering, the log sink's file handling and the log throttle."""

import io
import json
import logging
import os

import pytest
import structlog

from relay.config import ConfigError
from relay.ops.logging import LogSink, LogThrottle, configure_logging
from tests.e2e.log_format import line_problems

USER = "550e8400-e29b-41d4-a716-446655440000"


@pytest.fixture
def configured():
    """Configure logging into a string buffer; restore the defaults afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    sinks = []

    def configure(level="debug", log_format="json", log_file=None):
        stream = io.StringIO()
        sinks.append(configure_logging(level, log_format, "ams", log_file, stream))
        return stream

    yield configure
    for sink in sinks:
        sink.close()
    structlog.reset_defaults()
    root.handlers[:], root.level = saved


def lines_of(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_line_has_promtail_fields(configured):
    stream = configured()
    structlog.get_logger("test").info("message_delivered", user_id=USER, duration_ms=45)
    (line,) = lines_of(stream)
    assert line_problems(line, "ams") == []
    event = json.loads(line)
    assert event["message"] == "message_delivered"
    assert event["level"] == "INFO"
    assert event["user_id"] == USER
    assert event["duration_ms"] == 45


def test_levels_use_plan_names(configured):
    stream = configured()
    log = structlog.get_logger("test")
    log.debug("a")
    log.info("b")
    log.warning("c")
    log.error("d")
    levels = [json.loads(line)["level"] for line in lines_of(stream)]
    assert levels == ["DEBUG", "INFO", "WARN", "ERROR"]


def test_level_setting_filters_debug(configured):
    stream = configured(level="info")
    log = structlog.get_logger("test")
    log.debug("hidden")
    log.info("shown")
    assert [json.loads(line)["message"] for line in lines_of(stream)] == ["shown"]


def test_exception_rendered_as_error(configured):
    stream = configured()
    try:
        raise ValueError("bad value")
    except ValueError:
        structlog.get_logger("test").exception("request_failed")
    (line,) = lines_of(stream)
    assert line_problems(line, "ams") == []
    event = json.loads(line)
    assert event["level"] == "ERROR"
    assert event["exception"][0]["exc_type"] == "ValueError"


def test_explicit_trace_id_kept_and_run_id_default(configured):
    stream = configured()
    log = structlog.get_logger("test")
    log.info("first")
    log.info("second")
    log.info("traced", trace_id="0123456789abcdef")
    first, second, traced = (json.loads(line) for line in lines_of(stream))
    assert first["trace_id"] == second["trace_id"]
    assert traced["trace_id"] == "0123456789abcdef"


def test_stdlib_records_share_format(configured):
    stream = configured()
    logging.getLogger("uvicorn.error").warning("invalid request from %s", "peer")
    (line,) = lines_of(stream)
    assert line_problems(line, "ams") == []
    event = json.loads(line)
    assert event["level"] == "WARN"
    assert event["message"] == "invalid request from peer"
    assert event["logger"] == "uvicorn.error"


def test_console_on_stdout_json_in_file(configured, tmp_path):
    log_file = tmp_path / "relay.log"
    stream = configured(log_format="console", log_file=log_file)
    structlog.get_logger("test").info("relay_started", udp_port=41641)
    (console,) = lines_of(stream)
    assert "relay_started" in console
    assert "udp_port=41641" in console
    assert not console.startswith("{")
    assert "service=" not in console
    (line,) = log_file.read_text().splitlines()
    assert line_problems(line, "ams") == []


def test_unwritable_log_file_is_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="LOG_FILE"):
        LogSink(blocker / "relay.log", io.StringIO())


def test_reopen_follows_rotation(tmp_path):
    path = tmp_path / "relay.log"
    sink = LogSink(path, io.StringIO())
    sink.write_lines("one", "one")
    os.rename(path, tmp_path / "relay.log.1")
    sink.write_lines("two", "two")
    assert sink.reopen() == ""
    sink.write_lines("three", "three")
    sink.close()
    assert (tmp_path / "relay.log.1").read_text() == "one\ntwo\n"
    assert path.read_text() == "three\n"


def test_failed_reopen_keeps_old_file(tmp_path):
    folder = tmp_path / "log"
    sink = LogSink(folder / "relay.log", io.StringIO())
    folder.rename(tmp_path / "moved")
    folder.write_text("now a file, so the folder cannot be made")
    assert sink.reopen() != ""
    sink.write_lines("kept", "kept")
    sink.close()
    assert (tmp_path / "moved" / "relay.log").read_text() == "kept\n"


def test_write_to_closed_stream_does_not_raise():
    stream = io.StringIO()
    sink = LogSink(None, stream)
    stream.close()
    sink.write_lines("lost", "lost")
    assert sink.write_errors == 1


def test_throttle_lets_one_line_per_interval():
    now = [100.0]
    throttle = LogThrottle(10.0, clock=lambda: now[0])
    assert throttle.allow("disk") == 0
    assert throttle.allow("disk") is None
    assert throttle.allow("disk") is None
    assert throttle.allow("other") == 0
    now[0] += 10.0
    assert throttle.allow("disk") == 2
    assert throttle.allow("disk") is None
