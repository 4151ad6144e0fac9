"""Which Accept headers get the Prometheus text form of /health."""

import pytest

from relay.server.http import wants_prometheus_text


@pytest.mark.parametrize(
    "accept",
    [
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        "text/plain",
        "TEXT/PLAIN; charset=utf-8",
        "application/json;q=0.9, text/plain;q=0.1",
    ],
)
def test_prometheus_form_asked_for(accept):
    assert wants_prometheus_text(accept)


@pytest.mark.parametrize(
    "accept",
    [
        "",
        "*/*",
        "application/json",
        "text/html,application/xhtml+xml,*/*;q=0.8",
        "text/plain;q=0, application/json",
        "text/plain; q=0.0",
        "text/plainx",
    ],
)
def test_json_form_otherwise(accept):
    assert not wants_prometheus_text(accept)
