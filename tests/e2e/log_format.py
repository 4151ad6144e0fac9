"""The log line format promtail parses, as checks that name each problem."""

import json
import re
import uuid
from datetime import datetime

from relay import __version__

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
TRACE_ID = re.compile(r"^[0-9a-f]{16}$")
LEVELS = {"ERROR", "WARN", "INFO", "DEBUG"}
REQUIRED = ("timestamp", "level", "message", "service", "version", "region", "trace_id")


def line_problems(line: str, region: str) -> list[str]:
    """Return what is wrong with one log line; an empty list when it is valid."""
    try:
        event = json.loads(line)
    except ValueError:
        return [f"not JSON: {line[:120]!r}"]
    if not isinstance(event, dict):
        return [f"not an object: {line[:120]!r}"]
    problems = [f"missing {key}" for key in REQUIRED if key not in event]
    if problems:
        return problems
    if list(event)[: len(REQUIRED)] != list(REQUIRED):
        problems.append(f"fields out of order: {list(event)[:7]}")
    if not TIMESTAMP.match(event["timestamp"]):
        problems.append(f"timestamp {event['timestamp']!r}")
    else:
        datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    if event["level"] not in LEVELS:
        problems.append(f"level {event['level']!r}")
    if not isinstance(event["message"], str) or not event["message"]:
        problems.append(f"message {event['message']!r}")
    if event["service"] != "yaok-relay":
        problems.append(f"service {event['service']!r}")
    if event["version"] != __version__:
        problems.append(f"version {event['version']!r}")
    if event["region"] != region:
        problems.append(f"region {event['region']!r}")
    if not TRACE_ID.match(str(event["trace_id"])):
        problems.append(f"trace_id {event['trace_id']!r}")
    if "user_id" in event:
        try:
            uuid.UUID(event["user_id"])
        except (ValueError, TypeError, AttributeError):
            problems.append(f"user_id {event['user_id']!r}")
    if "duration_ms" in event:
        duration = event["duration_ms"]
        if isinstance(duration, bool) or not isinstance(duration, int | float):
            problems.append(f"duration_ms {duration!r}")
        elif duration < 0:
            problems.append(f"negative duration_ms {duration!r}")
    return problems
