"""Health evaluation: each figure against its thresholds, and the worst finding wins."""

import pytest

from relay.config import load_settings
from relay.ops.health import (
    DEGRADED,
    HEALTHY,
    UNHEALTHY,
    StorageFigures,
    Thresholds,
    evaluate,
    percentile,
)

GIB = 1024**3

LIMITS = Thresholds(
    oldest_message_degraded_s=3_600,
    oldest_message_unhealthy_s=0,
    wal_degraded_bytes=256 * 1024**2,
    wal_unhealthy_bytes=2 * GIB,
    disk_free_degraded_percent=10,
    disk_free_unhealthy_percent=2,
    commit_p95_degraded_ms=250,
    commit_p95_unhealthy_ms=2_000,
)


def figures(**changes) -> StorageFigures:
    values = {
        "oldest_message_age_seconds": 60.0,
        "database_bytes": 10 * 1024**2,
        "wal_bytes": 4 * 1024**2,
        "disk_free_bytes": 50 * GIB,
        "disk_total_bytes": 100 * GIB,
        "commit_latency_p95_ms": 5.0,
    }
    values.update(changes)
    return StorageFigures(**values)


def report(storage_figures=None, *, database_ok=True, connections=0, limits=LIMITS):
    return evaluate(
        uptime_seconds=12.0,
        active_connections=connections,
        max_connections=10_000,
        database_ok=database_ok,
        database_error="" if database_ok else "database file is corrupt: malformed",
        queue_size=3,
        figures=storage_figures or figures(),
        thresholds=limits,
    )


def test_normal_figures_are_healthy():
    result = report()
    assert result.status == HEALTHY
    assert result.http_status == 200
    assert result.reasons == []
    assert result.disk_free_percent == 50.0
    assert result.commit_latency_p95_ms == 5.0


@pytest.mark.parametrize(
    ("changes", "status", "words"),
    [
        ({"oldest_message_age_seconds": 3_601.0}, DEGRADED, "oldest waiting message"),
        ({"wal_bytes": 300 * 1024**2}, DEGRADED, "WAL file"),
        ({"wal_bytes": 3 * GIB}, UNHEALTHY, "WAL file"),
        ({"disk_free_bytes": 5 * GIB}, DEGRADED, "5.0 % free"),
        ({"disk_free_bytes": GIB}, UNHEALTHY, "1.0 % free"),
        ({"commit_latency_p95_ms": 300.0}, DEGRADED, "commit latency p95"),
        ({"commit_latency_p95_ms": 2_500.0}, UNHEALTHY, "commit latency p95"),
    ],
)
def test_figure_past_threshold(changes, status, words):
    result = report(figures(**changes))
    assert result.status == status
    assert result.http_status == (503 if status == UNHEALTHY else 200)
    assert len(result.reasons) == 1
    assert result.reasons[0].startswith(f"{status}: ")
    assert words in result.reasons[0]


def test_threshold_zero_turns_check_off():
    ancient = figures(oldest_message_age_seconds=10.0**9)
    assert report(ancient, limits=Thresholds()).status == HEALTHY


def test_figure_at_threshold_is_not_past_it():
    assert report(figures(oldest_message_age_seconds=3_600.0)).status == HEALTHY


def test_unmeasured_figures_are_healthy():
    unmeasured = figures(
        oldest_message_age_seconds=None,
        disk_free_bytes=None,
        disk_total_bytes=None,
        commit_latency_p95_ms=None,
    )
    result = report(unmeasured)
    assert result.status == HEALTHY
    assert result.disk_free_percent is None
    gauges = result.gauges()
    assert gauges["health_disk_free_bytes"] == -1.0
    assert gauges["health_oldest_message_age_seconds"] == 0.0


def test_worst_finding_decides_and_all_are_listed():
    result = report(
        figures(oldest_message_age_seconds=7_200.0, disk_free_bytes=GIB),
        database_ok=False,
    )
    assert result.status == UNHEALTHY
    assert len(result.reasons) == 3
    assert result.reasons[0] == (
        "unhealthy: database check failed: database file is corrupt: malformed"
    )


def test_connections_over_ninety_percent_unhealthy():
    assert report(connections=9_000).status == HEALTHY
    result = report(connections=9_001)
    assert result.status == UNHEALTHY
    assert "active connections 9001" in result.reasons[0]


def test_stored_message_limit_degrades():
    def with_limit(limit):
        return evaluate(
            uptime_seconds=1.0,
            active_connections=0,
            max_connections=10_000,
            database_ok=True,
            database_error="",
            queue_size=3,
            max_queue_size=limit,
        )

    assert with_limit(4).status == HEALTHY
    result = with_limit(3)
    assert result.status == DEGRADED
    assert result.http_status == 200
    assert result.reasons == [
        "degraded: 3 messages waiting, MAX_STORED_MESSAGES is 3: "
        "new messages are answered UNAVAILABLE"
    ]


def test_gauges_cover_every_figure():
    gauges = report(figures(commit_latency_p95_ms=120.0)).gauges()
    assert gauges["health_status"] == 2
    assert gauges["health_commit_latency_p95_seconds"] == pytest.approx(0.12)
    assert gauges["health_wal_size_bytes"] == 4 * 1024**2
    assert gauges["health_disk_size_bytes"] == 100 * GIB
    assert gauges["health_reasons"] == 0
    assert report(figures(wal_bytes=3 * GIB)).gauges()["health_status"] == 0


def test_report_keeps_required_fields():
    fields = report().as_dict()
    for name in (
        "status",
        "version",
        "uptime_seconds",
        "active_connections",
        "database_ok",
        "queue_size",
    ):
        assert name in fields


def test_percentile_nearest_rank():
    assert percentile([], 0.95) is None
    assert percentile([7.0], 0.95) == 7.0
    samples = [float(n) for n in range(1, 101)]
    assert percentile(samples, 0.95) == 95.0
    assert percentile(list(reversed(samples)), 0.5) == 50.0


def test_thresholds_follow_settings(monkeypatch):
    monkeypatch.setenv("MESSAGE_TTL_MAX_S", "86400")
    monkeypatch.setenv("MESSAGE_TTL_DEFAULT_S", "3600")
    monkeypatch.setenv("HEALTH_WAL_DEGRADED_BYTES", "1000")
    limits = Thresholds.from_settings(load_settings())
    # The default age limit follows the longest TTL, plus a day.
    assert limits.oldest_message_degraded_s == 2 * 86_400
    assert limits.wal_degraded_bytes == 1000
    monkeypatch.setenv("HEALTH_OLDEST_MESSAGE_DEGRADED_S", "600")
    assert Thresholds.from_settings(load_settings()).oldest_message_degraded_s == 600
