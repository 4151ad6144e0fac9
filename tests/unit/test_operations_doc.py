"""docs/operations.md lists every setting, metric and alert the relay has."""

import re
import time
from pathlib import Path

import yaml

from relay.config import Settings
from relay.ops.metrics import RelayCollector, WindowedRates, build_registry, render

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "operations.md").read_text()


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", DOC, re.S | re.M)
    assert match, f"no section {title!r}"
    return match.group(1)


def test_configuration_lists_every_setting():
    documented = set(
        re.findall(r"^\| `([A-Z0-9_]+)` \|", section("Configuration"), re.M)
    )
    assert documented == {name.upper() for name in Settings.model_fields}


def test_configuration_defaults_match_code():
    text = section("Configuration")
    for name, field in Settings.model_fields.items():
        if isinstance(field.default, int) and not isinstance(field.default, bool):
            row = re.search(rf"^\| `{name.upper()}` \| `([0-9.]+)`", text, re.M)
            assert row, name
            assert float(row.group(1)) == field.default, name


async def test_metrics_lists_every_family(relay):
    collector = RelayCollector(
        relay.core, relay.storage, WindowedRates(relay.core), time.monotonic()
    )
    exposition = render(build_registry(collector)).decode()
    families = set(re.findall(r"^# TYPE (\S+) ", exposition, re.M))
    families = {name for name in families if not name.startswith("process_")}
    text = section("Metrics")
    missing = [name for name in families if f"`{name}" not in text]
    assert missing == []


def test_metrics_lists_every_alert():
    text = (REPO / "deploy" / "prometheus" / "rules" / "relay-alerts.yml").read_text()
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(text)["groups"]
        for rule in group["rules"]
    }
    documented = set(re.findall(r"^\| `(Relay\w+)` \|", section("Metrics"), re.M))
    assert documented == alerts


def test_runbook_headings_for_merge():
    headings = re.findall(r"^## (.+)$", DOC, re.M)
    for expected in (
        "Starting the relay",
        "Configuration",
        "Metrics",
        "Logs and rotation",
        "Shutdown and deploys",
        "Emergency: raising MAX_CONNECTIONS",
        "Region failover as phones see it",
        "Relay key",
    ):
        assert expected in headings
