"""The ops API: /health, /metrics and /version, on uvicorn in the relay's loop."""

import time
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from relay import PROTOCOL_VERSION, __version__
from relay.ops.health import (
    GAUGE_HELP,
    DatabaseProbe,
    HealthReport,
    Thresholds,
    evaluate,
    read_figures,
)
from relay.ops.metrics import render

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from relay.core.relay import RelayCore
    from relay.storage.sqlite import SqliteStorage


class HealthBody(BaseModel):
    status: str
    version: str
    uptime_seconds: float
    active_connections: int
    max_connections: int
    database_ok: bool
    queue_size: int
    oldest_message_age_seconds: float | None
    database_bytes: int
    wal_bytes: int
    disk_free_bytes: int | None
    disk_total_bytes: int | None
    disk_free_percent: float | None
    commit_latency_p95_ms: float | None
    reasons: list[str]


class VersionBody(BaseModel):
    version: str
    protocol_version: int
    relay_public_key: str


def wants_prometheus_text(accept: str) -> bool:
    """Tell whether an Accept header asks for Prometheus' text formats.

    Prometheus sends "application/openmetrics-text" and "text/plain";
    curl and browsers send "*/*" or "text/html" and get JSON. A media
    range with q=0 is one the client refuses (RFC 9110, 12.5.1).
    """
    for media_range in accept.lower().split(","):
        media_type, *parameters = (part.strip() for part in media_range.split(";"))
        if media_type not in _PROMETHEUS_MEDIA_TYPES:
            continue
        if not any(_is_zero_weight(parameter) for parameter in parameters):
            return True
    return False


_PROMETHEUS_MEDIA_TYPES = ("application/openmetrics-text", "text/plain")


def _is_zero_weight(parameter: str) -> bool:
    name, _, value = parameter.partition("=")
    if name.strip() != "q":
        return False
    try:
        return float(value) == 0
    except ValueError:
        return False


def health_text(report: HealthReport) -> bytes:
    lines = []
    for name, value in report.gauges().items():
        lines.append(f"# HELP {name} {GAUGE_HELP[name]}")
        lines.append(f"# TYPE {name} gauge")
        lines.append(f"{name} {float(value)!r}")
    return ("\n".join(lines) + "\n").encode()


class OpsState:
    """What the endpoints read: the core, the storage and the metrics registry."""

    def __init__(
        self,
        core: "RelayCore",
        storage: "SqliteStorage",
        registry: "CollectorRegistry",
        started_monotonic: float,
    ) -> None:
        self.core = core
        self.storage = storage
        self.registry = registry
        self.started = started_monotonic
        self.probe = DatabaseProbe(storage, core.settings.database_check_timeout_s)
        self.thresholds = Thresholds.from_settings(core.settings)

    async def health(self) -> HealthReport:
        database_ok = await self.probe.check()
        return evaluate(
            uptime_seconds=time.monotonic() - self.started,
            active_connections=len(self.core.sessions),
            max_connections=self.core.settings.max_connections,
            database_ok=database_ok,
            database_error=self.probe.error,
            queue_size=self.storage.stats().queue_size,
            max_queue_size=self.core.settings.max_stored_messages,
            figures=read_figures(self.storage, self.core.clock()),
            thresholds=self.thresholds,
        )


# The Prometheus text form that /health and /metrics send; the schema lists
# it so that clients and schema checkers accept either form.
_PROMETHEUS_CONTENT = {"text/plain": {"schema": {"type": "string"}}}


def create_app(state: OpsState) -> FastAPI:
    app = FastAPI(
        title="yaok-relay ops API",
        version=__version__,
        docs_url=None,
        redoc_url=None,
    )

    @app.get(
        "/health",
        response_model=HealthBody,
        responses={
            200: {"content": _PROMETHEUS_CONTENT},
            503: {"model": HealthBody, "description": "Unhealthy"},
        },
    )
    async def health(request: Request) -> Response:
        """Report health as JSON, or as health_* gauges for Prometheus.

        JSON answers 503 when unhealthy. The Prometheus form always answers
        200, since a failed scrape would hide the very gauges that say why.
        """
        report = await state.health()
        if wants_prometheus_text(request.headers.get("accept", "")):
            return Response(health_text(report), media_type=CONTENT_TYPE_LATEST)
        return JSONResponse(report.as_dict(), status_code=report.http_status)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": _PROMETHEUS_CONTENT, "description": "Metrics"}},
    )
    async def metrics() -> Response:
        return Response(render(state.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/version", response_model=VersionBody)
    async def version() -> VersionBody:
        return VersionBody(
            version=__version__,
            protocol_version=PROTOCOL_VERSION,
            relay_public_key=state.core.relay_public.hex(),
        )

    return app
