"""The ops API against its own OpenAPI schema, with schemathesis, on a real relay.

Schemathesis reads /openapi.json from the running relay and generates
requests for every operation it lists; every answer must match the schema
(status, content type, body, headers) and none may be a server error. The
schema declares no request headers, so each operation is also called with
every Accept value that changes what the relay sends.

NOTE: schemathesis 4.32's own pytest integration (schemathesis.pytest.
from_fixture) fails under pytest 9 (it sets Function._nodeid), so the
operations are driven through their hypothesis strategies instead.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from relay.testing import RelayProcess
from tests.security_figures import record

pytestmark = pytest.mark.e2e

EXAMPLES_PER_OPERATION = 50
ACCEPT_VALUES = (
    "application/json",
    "*/*",
    "text/html",
    "text/plain",
    "text/plain; version=0.0.4",
    "application/openmetrics-text; version=1.0.0; charset=utf-8",
    "TEXT/PLAIN",
    "application/json, text/plain;q=0.5",
    "",
)
cases_run: dict[str, int] = {}


@pytest.fixture(scope="module")
def ops_api(tmp_path_factory):
    relay = RelayProcess(tmp_path_factory.mktemp("relay")).start()
    url = f"http://127.0.0.1:{relay.http_port}/openapi.json"
    yield schemathesis.openapi.from_url(url)
    relay.kill()


@pytest.fixture(scope="module", autouse=True)
def record_cases():
    yield
    record(
        "http_schema",
        {"cases_by_operation": dict(cases_run), "cases": sum(cases_run.values())},
    )


def operations(schema) -> list:
    found = [result.ok() for result in schema.get_all_operations()]
    assert found, "the schema lists no operation"
    return found


def test_generated_requests_match_schema(ops_api):
    for operation in operations(ops_api):
        label = f"generated {operation.method.upper()} {operation.path}"
        count = 0

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
        def call(case) -> None:
            nonlocal count
            count += 1
            case.call_and_validate()

        call()
        cases_run[label] = count


@pytest.mark.parametrize("accept", ACCEPT_VALUES)
def test_every_accept_value_matches_schema(ops_api, accept):
    for operation in operations(ops_api):
        case = operation.Case(headers={"Accept": accept})
        case.call_and_validate()
        label = f"accept {operation.method.upper()} {operation.path}"
        cases_run[label] = cases_run.get(label, 0) + 1
