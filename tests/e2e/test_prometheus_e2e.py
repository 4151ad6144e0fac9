"""The Prometheus assets, checked by promtool and a Prometheus scraping the relay."""

import json
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.e2e.phone import UdpPhone

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
DASHBOARD = REPO / "deploy" / "grafana" / "relay-dashboard.json"
PROMETHEUS_TEXT = {"Accept": "text/plain;version=0.0.4"}
METRIC_NAME = re.compile(
    r"\b(?:relay_[a-z0-9_]+|health_[a-z0-9_]+|auth_failures_total"
    r"|invalid_signatures_total|rate_limit_exceeded_total|process_[a-z0-9_]+)\b"
)


def promtool(*arguments: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["promtool", *arguments],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROMETHEUS_DIR,
    )


def exposed_names(exposition: str) -> set[str]:
    """Return the sample names and the declared family names of an exposition."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[ {]", line, maxsplit=1)[0])
    return names


def metric_names_in(query: str) -> set[str]:
    without_recorded = re.sub(r"\b[a-z]+:[a-z0-9_]+:[a-z0-9_]+\b", " ", query)
    return set(METRIC_NAME.findall(without_recorded))


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def recording_rules() -> list[dict]:
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules.extend(group["rules"])
    return rules


def concrete(query: str) -> str:
    """Replace Grafana's variables with values Prometheus accepts."""
    return query.replace("$region", ".*").replace("$__rate_interval", "1m")


@pytest.fixture
def busy_relay(relay_factory):
    relay = relay_factory(RUST_LOG="info")
    alice = UdpPhone(relay.udp_address, relay.relay_public_key)
    bob = UdpPhone(relay.udp_address, relay.relay_public_key)
    alice.register()
    bob.register()
    alice.send(alice.message(bob, b"sealed"))
    alice.receive()
    bob.receive()
    bob.send(b"\x01\x13 garbage")
    yield relay
    alice.close()
    bob.close()


def test_promtool_checks_rules_and_config():
    rules = promtool("check", "rules", *map(str, RULE_FILES))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    assert "2 rule files found" in config.stdout


def test_promtool_rule_unit_tests_pass():
    result = promtool("test", "rules", "tests/relay-rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {r["alert"] for r in recording_rules() if "alert" in r}
    tested = set(
        re.findall(
            r"alertname: (\w+)",
            (PROMETHEUS_DIR / "tests" / "relay-rules.test.yml").read_text(),
        )
    )
    assert alerts == tested


def test_promtool_accepts_metrics_and_health(busy_relay):
    _, metrics, headers = busy_relay.http_get("/metrics")
    assert headers["content-type"].startswith("text/plain")
    result = promtool("check", "metrics", stdin=metrics)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""
    status, health, headers = busy_relay.http_get("/health", PROMETHEUS_TEXT)
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    result = promtool("check", "metrics", stdin=health)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_rules_and_dashboard_use_real_names(busy_relay):
    _, metrics, _ = busy_relay.http_get("/metrics")
    _, health, _ = busy_relay.http_get("/health", PROMETHEUS_TEXT)
    exposed = exposed_names(metrics) | exposed_names(health)
    known = exposed
    texts = [r["expr"] for r in recording_rules()] + dashboard_queries()
    used = set().union(*(metric_names_in(text) for text in texts))
    assert used - known == set()
    plan = {
        "relay_requests_total",
        "relay_requests_success_total",
        "relay_requests_failed_total",
        "relay_request_duration_seconds_bucket",
        "relay_active_connections",
        "relay_message_queue_size",
        "relay_message_ttl_violations_total",
        "relay_cpu_usage_percent",
        "relay_memory_usage_bytes",
        "relay_uptime_seconds",
        "relay_registration_rate",
        "relay_heartbeat_failures_total",
        "relay_error_rate",
        "auth_failures_total",
        "invalid_signatures_total",
        "rate_limit_exceeded_total",
        "relay_ddos_attempts_total",
    }
    assert plan - exposed == set()
    recorded = {r["record"] for r in recording_rules() if "record" in r}
    for query in dashboard_queries():
        for name in re.findall(r"\b[a-z]+:[a-z0-9_]+:[a-z0-9_]+\b", query):
            assert name in recorded, name


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prometheus_config(http_port: int) -> dict:
    """The shipped prometheus.yml, pointed at the test relay with a 1 s interval."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(
        scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s"
    )
    config["rule_files"] = [str(PROMETHEUS_DIR / path) for path in config["rule_files"]]
    for job in config["scrape_configs"]:
        job["scheme"] = "http"
        job["static_configs"] = [
            {"targets": [f"127.0.0.1:{http_port}"], "labels": {"region": "test"}}
        ]
    return config


class Prometheus:
    def __init__(self, directory: Path, config: dict) -> None:
        directory.mkdir()
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.log = (directory / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [
                "/usr/bin/prometheus",
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )

    def get(self, path: str, **parameters: str) -> dict:
        query = urllib.parse.urlencode(parameters)
        url = f"http://127.0.0.1:{self.port}{path}?{query}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    def query(self, expression: str) -> list[dict]:
        answer = self.get("/api/v1/query", query=expression)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def wait_for(self, expression: str, timeout_s: float = 60.0) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "prometheus exited"
            try:
                result = self.query(expression)
            except OSError:
                result = []
            if result:
                return result
            time.sleep(0.25)
        raise AssertionError(f"no series for {expression} in {timeout_s} s")

    def stop(self) -> int:
        self.process.terminate()
        try:
            return self.process.wait(30)
        finally:
            self.log.close()


def test_prometheus_scrapes_both_jobs(busy_relay, tmp_path):
    prometheus = Prometheus(
        tmp_path / "prometheus", prometheus_config(busy_relay.http_port)
    )
    try:
        requests = prometheus.wait_for('relay_requests_total{job="yaok-relay"}')
        assert {r["metric"]["type"] for r in requests} >= {"register", "message"}
        assert all(r["metric"]["region"] == "test" for r in requests)
        (database_ok,) = prometheus.wait_for(
            'health_database_ok{job="yaok-relay-health"}'
        )
        assert database_ok["value"][1] == "1"
        health_series = prometheus.query('{job="yaok-relay-health"}')
        names = {s["metric"]["__name__"] for s in health_series}
        scrape_meta = {n for n in names if n == "up" or n.startswith("scrape_")}
        assert names - scrape_meta
        assert all(n.startswith("health_") for n in names - scrape_meta)
        prometheus.wait_for("instance:relay_requests:rate5m")
        rules = prometheus.get("/api/v1/rules")["data"]["groups"]
        loaded = [rule for group in rules for rule in group["rules"]]
        assert len(loaded) == len(recording_rules())
        prometheus.wait_for("up")  # at least one evaluation has run
        time.sleep(1.5)
        rules = prometheus.get("/api/v1/rules")["data"]["groups"]
        for rule in (rule for group in rules for rule in group["rules"]):
            assert rule["health"] in ("ok", "unknown"), rule
        for query in dashboard_queries():
            prometheus.query(concrete(query))
    finally:
        assert prometheus.stop() == 0
