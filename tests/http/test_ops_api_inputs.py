"""Hostile HTTP requests to the real relay's ops API: no 5xx, and it keeps serving.

Hypothesis writes raw requests (so that nothing is cleaned up on the way):
any method token, paths with traversal, percent escapes, control and
non-ASCII bytes, long paths and query strings, odd Accept values and
repeated headers. uvicorn may reject a request with 400 itself; what
reaches the app must not end in a server error.
"""

import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.testing import RelayProcess
from tests.security_figures import record

pytestmark = pytest.mark.e2e

EXAMPLES = 300
KNOWN_PATHS = ("/health", "/metrics", "/version", "/openapi.json", "/docs", "/")
statuses: dict[str, int] = {}


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    process = RelayProcess(tmp_path_factory.mktemp("relay")).start()
    yield process
    process.kill()


def _bytes_from(alphabet: str, max_size: int) -> st.SearchStrategy[bytes]:
    return st.text(alphabet=alphabet, max_size=max_size).map(str.encode)


printable = "".join(chr(code) for code in range(0x21, 0x7F))
paths = st.one_of(
    st.sampled_from(KNOWN_PATHS).map(str.encode),
    st.tuples(st.sampled_from(KNOWN_PATHS), _bytes_from(printable, 40)).map(
        lambda parts: parts[0].encode() + parts[1]
    ),
    st.binary(max_size=60).map(lambda raw: b"/" + raw.replace(b" ", b"%20")),
    st.integers(1, 9000).map(lambda size: b"/" + b"a" * size),
    st.sampled_from(
        [b"/../../etc/passwd", b"/%2e%2e/%2e%2e", b"//health", b"/health/"]
    ),
)
queries = st.one_of(
    st.just(b""),
    _bytes_from(printable, 80).map(lambda query: b"?" + query),
    st.integers(1, 9000).map(lambda size: b"?q=" + b"x" * size),
)
accepts = st.one_of(
    st.sampled_from(
        [
            b"text/plain",
            b"application/openmetrics-text",
            b"*/*",
            b"",
            b"\xff\xfe",
            b";;;",
        ]
    ),
    st.binary(max_size=200).map(
        lambda raw: raw.replace(b"\r", b"").replace(b"\n", b"")
    ),
)
methods = st.one_of(
    st.sampled_from(
        [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"]
    ),
    _bytes_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ", 12),
)
extra_headers = st.lists(
    st.sampled_from(
        [
            b"Accept: text/plain",
            b"Content-Length: 5",
            b"Transfer-Encoding: chunked",
            b"Host: other",
            b"X-Forwarded-For: 1.2.3.4",
            b"Connection: close",
        ]
    ),
    max_size=3,
)


def send_raw(port: int, request: bytes) -> int | None:
    """Send one raw request; return the status code, or None if the server hung up."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(request)
        try:
            connection.shutdown(socket.SHUT_WR)
        except OSError:
            return None
        reply = b""
        try:
            while b"\r\n" not in reply:
                chunk = connection.recv(4096)
                if not chunk:
                    break
                reply += chunk
        except ConnectionResetError:
            return None
    if not reply.startswith(b"HTTP/1."):
        return None
    return int(reply.split(b" ", 2)[1])


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(methods, paths, queries, accepts, extra_headers)
def test_hostile_requests_never_500(relay, method, path, query, accept, headers):
    lines = [
        method + b" " + path + query + b" HTTP/1.1",
        b"Host: 127.0.0.1",
        b"Accept: " + accept,
    ]
    request = b"\r\n".join([*lines, *headers]) + b"\r\n\r\n"
    status = send_raw(relay.http_port, request)
    outcome = str(status) if status else "closed_without_answer"
    statuses[outcome] = statuses.get(outcome, 0) + 1
    assert status is None or status < 500 or (status == 503 and path == b"/health"), (
        status,
        request[:300],
    )


def test_relay_serves_after_hostile_requests(relay):
    status, body, _ = relay.http_get("/health")
    assert status == 200, body
    if statuses:
        figures = {"requests": sum(statuses.values()), "statuses": statuses}
        record("http_inputs", figures)
