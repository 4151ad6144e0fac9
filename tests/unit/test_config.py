"""Settings from the environment and their one-line errors."""

import pytest

from relay.config import ConfigError, load_settings, parse_rust_log
from relay.testing import serve_once


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("DATABASE_URL", "RUST_LOG", "RELAY_PORT", "MAX_CONNECTIONS"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_use_embedded_database():
    settings = load_settings()
    assert str(settings.database_path) == "data/yaok_relay.db"
    assert settings.key_path.name == "relay_key"
    assert settings.relay_port == 41641
    assert settings.http_port == 8080


def test_database_url_path_follows_scheme(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "sqlite:///data/yaok_relay.db")
    assert str(load_settings().database_path) == "/data/yaok_relay.db"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RELAY_PORT", "abc"),
        ("RELAY_PORT", "70000"),
        ("MAX_CONNECTIONS", "0"),
        ("RUST_LOG", "loud"),
        ("DATABASE_URL", "postgres://db/relay"),
        ("DATABASE_URL", "sqlite://"),
    ],
)
def test_bad_value_names_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert name in message
    assert repr(value) in message
    assert "expected" in message


def test_prometheus_endpoint_accepted(monkeypatch):
    monkeypatch.setenv("PROMETHEUS_ENDPOINT", "https://prometheus.example")
    assert load_settings().prometheus_endpoint == "https://prometheus.example"


@pytest.mark.parametrize(
    ("value", "level"),
    [
        ("info", "info"),
        ("WARN", "warn"),
        ("warning", "warn"),
        ("error,yaok_relay=debug", "debug"),
        ("debug,hyper=warn", "debug"),
    ],
)
def test_rust_log_forms(value, level):
    assert parse_rust_log(value) == level


def test_rust_log_without_level_for_relay_rejected():
    with pytest.raises(ValueError):
        parse_rust_log("hyper=warn")


def test_serve_with_bad_value_prints_one_line(tmp_path):
    environment = {"RELAY_PORT": "not-a-port", "PATH": "/usr/bin:/bin"}
    result = serve_once(environment, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "RELAY_PORT='not-a-port'" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "name", ["RELAY_KEY_PATH", "LOG_FILE", "PID_FILE", "BACKUP_DIR"]
)
def test_empty_path_setting_means_unset(monkeypatch, name):
    monkeypatch.setenv(name, "")
    assert getattr(load_settings(), name.lower()) is None
