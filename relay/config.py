"""Settings read from the environment, checked once at start-up.

Every protocol limit, quota, rate and timeout is a setting here. A bad value
stops start-up with one line naming the variable, the value and what is
accepted (see `ConfigError`).
"""

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOG_LEVELS = ("error", "warn", "info", "debug", "trace")
_LEVEL_ALIASES = {"warning": "warn", "critical": "error", "off": "error"}


class ConfigError(Exception):
    """Invalid configuration, with a message fit for one line on stderr."""


def _between(low: int, high: int, unit: str = "") -> str:
    suffix = f" ({unit})" if unit else ""
    return f"an integer from {low:,} to {high:,}{suffix}"


def _int(default: int, low: int, high: int, unit: str = "") -> object:
    return Field(default, ge=low, le=high, description=_between(low, high, unit))


# Largest MESSAGE payload that still fits one UDP datagram with its framing.
MAX_PAYLOAD_CEILING = 65_379
DAY_S = 86_400
MIB = 1024 * 1024


def parse_rust_log(value: str) -> str:
    """Return the relay's level from a RUST_LOG value.

    Plain levels ("info") are accepted, and so are env_logger directives
    ("warn,yaok_relay=debug"), where a target naming the relay wins over
    the bare default.
    """
    level = None
    for directive in value.replace(" ", "").lower().split(","):
        if not directive:
            continue
        target, _, named = directive.rpartition("=")
        named = _LEVEL_ALIASES.get(named, named)
        if named not in LOG_LEVELS:
            raise ValueError(directive)
        if not target or "relay" in target or "yaok" in target:
            level = named
    if level is None:
        raise ValueError(value)
    return level


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    # --- operators' variables ---
    database_url: str = Field(
        "sqlite://data/yaok_relay.db",
        description="a sqlite:// URL; what follows sqlite:// is the file path, "
        "so sqlite:///data/yaok_relay.db is /data/yaok_relay.db",
    )
    rust_log: str = Field(
        "info", description="one of error, warn, info, debug, trace (env_logger form)"
    )
    relay_port: int = _int(41641, 0, 65535, "0 picks a free port")
    http_port: int = _int(8080, 0, 65535, "0 picks a free port")
    max_connections: int = _int(10_000, 1, 1_000_000, "live sessions")
    prometheus_endpoint: str | None = Field(None, description="any URL; informational")
    fly_region: str = Field("local", description="a region name such as ams")

    # --- where to listen and what to keep ---
    relay_host: str = Field(
        "0.0.0.0", description="an address or host name to bind UDP"
    )
    http_host: str = Field(
        "0.0.0.0", description="an address or host name to bind HTTP"
    )
    relay_key_path: Path | None = Field(
        None, description="a file path; default: relay_key beside the database"
    )
    log_format: Literal["json", "console"] = Field(
        "json", description="json or console"
    )
    log_file: Path | None = Field(None, description="a file path to append logs to")
    pid_file: Path | None = Field(
        None, description="a file path to write the process id to (for logrotate)"
    )

    # --- protocol limits ---
    session_timeout_s: int = _int(120, 5, 3_600, "seconds")
    message_ttl_max_s: int = _int(7 * DAY_S, 60, 90 * DAY_S, "seconds")
    message_ttl_default_s: int = _int(7 * DAY_S, 60, 90 * DAY_S, "seconds")
    max_payload_bytes: int = _int(60_000, 1, MAX_PAYLOAD_CEILING, "bytes")
    mailbox_max_messages: int = _int(1_000, 1, 10_000_000, "messages")
    mailbox_max_bytes: int = _int(16 * 1024 * 1024, 1, 2**40, "bytes")
    mailbox_max_per_sender: int = _int(100, 1, 10_000_000, "messages")
    # All mailboxes together. The mailbox index keeps every waiting message
    # in memory: 38 bytes a message were measured with 30 messages to a
    # mailbox, so 2,000,000 keep it under 80 MB on a 256 MB machine.
    max_stored_messages: int = _int(2_000_000, 1, 1_000_000_000, "messages")
    dedup_window_s: int = _int(DAY_S, 0, 30 * DAY_S, "seconds")
    cookie_lifetime_s: int = _int(30, 1, 30, "seconds")
    unregister_linger_s: int = _int(60, 0, 3_600, "seconds")

    # --- rate limits (per minute unless named otherwise) ---
    rate_register_per_ip: int = _int(30, 1, 1_000_000, "signed REGISTERs a minute")
    rate_unauthenticated_per_ip: int = _int(600, 1, 10_000_000, "datagrams a minute")
    rate_message_per_user: int = _int(100, 1, 10_000_000, "MESSAGEs a minute")
    rate_poll_per_user: int = _int(300, 1, 10_000_000, "POLLs a minute")
    rate_ack_per_user: int = _int(300, 1, 10_000_000, "ACKs a minute")
    rate_ping_per_user: int = _int(6, 1, 10_000_000, "PINGs a minute")
    replies_per_address_per_s: int = _int(100, 1, 1_000_000, "plain replies a second")

    # --- memory caps ---
    max_tracked_addresses: int = _int(100_000, 100, 10_000_000, "rate-limit entries")

    # --- storage and lifecycle ---
    write_batch_max: int = _int(1_000, 1, 100_000, "writes per commit")
    sweep_interval_s: int = _int(10, 1, 3_600, "seconds")
    shutdown_timeout_s: int = _int(5, 1, 300, "seconds")
    drain_retry_after_ms: int = _int(2_000, 0, 600_000, "milliseconds")
    database_check_timeout_s: float = Field(
        1.0, gt=0, le=60, description="seconds, above 0 and at most 60"
    )
    storage_retry_interval_s: int = _int(
        10, 1, 3_600, "seconds between attempts to open or write the database again"
    )

    # --- /health thresholds (0 turns a threshold off) ---
    health_oldest_message_degraded_s: int | None = Field(
        None,
        ge=0,
        le=365 * DAY_S,
        description="an integer from 0 to 31,536,000 (seconds; unset means "
        "MESSAGE_TTL_MAX_S plus one day, an age no message reaches while "
        "expired ones are swept)",
    )
    health_oldest_message_unhealthy_s: int = _int(0, 0, 365 * DAY_S, "seconds")
    health_wal_degraded_bytes: int = _int(256 * MIB, 0, 2**50, "bytes")
    health_wal_unhealthy_bytes: int = _int(0, 0, 2**50, "bytes")
    health_disk_free_degraded_percent: float = Field(
        10.0, ge=0, le=100, description="a percentage from 0 to 100"
    )
    health_disk_free_unhealthy_percent: float = Field(
        2.0, ge=0, le=100, description="a percentage from 0 to 100"
    )
    health_commit_p95_degraded_ms: int = _int(250, 0, 600_000, "milliseconds")
    health_commit_p95_unhealthy_ms: int = _int(2_000, 0, 600_000, "milliseconds")

    # --- maintenance and backups ---
    maintenance_busy_timeout_s: int = _int(30, 1, 3_600, "seconds")
    maintenance_analysis_limit: int = _int(1_000, 0, 1_000_000, "rows; 0 = all")
    maintenance_online_vacuum_max_bytes: int = _int(64 * MIB, 0, 2**50, "bytes")
    backup_dir: Path | None = Field(
        None, description="a folder path; default: backups beside the database"
    )
    backup_keep_daily: int = _int(30, 1, 3_650, "days")
    backup_keep_monthly: int = _int(12, 0, 1_200, "months")

    @field_validator(
        "relay_key_path", "log_file", "pid_file", "backup_dir", mode="before"
    )
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        # VAR= in a shell or an env file means "not set", not the current folder.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if not value.startswith("sqlite://") or len(value) <= len("sqlite://"):
            raise ValueError(value)
        return value

    @field_validator("rust_log")
    @classmethod
    def _check_rust_log(cls, value: str) -> str:
        return parse_rust_log(value)

    @property
    def database_path(self) -> Path:
        return Path(self.database_url[len("sqlite://") :])

    @property
    def key_path(self) -> Path:
        if self.relay_key_path is not None:
            return self.relay_key_path
        return self.database_path.parent / "relay_key"

    @property
    def log_level(self) -> str:
        return self.rust_log

    @property
    def oldest_message_degraded_s(self) -> int:
        if self.health_oldest_message_degraded_s is not None:
            return self.health_oldest_message_degraded_s
        return self.message_ttl_max_s + DAY_S

    @property
    def backup_folder(self) -> Path:
        if self.backup_dir is not None:
            return self.backup_dir
        return self.database_path.parent / "backups"


def _describe(error: dict) -> str:
    field = str(error["loc"][0]) if error["loc"] else "?"
    info = Settings.model_fields.get(field)
    accepted = info.description if info is not None and info.description else "?"
    value = os.environ.get(field.upper(), error.get("input"))
    return f"invalid configuration: {field.upper()}={value!r}: expected {accepted}"


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise ConfigError on a bad value."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0])) from None
    if settings.message_ttl_default_s > settings.message_ttl_max_s:
        raise ConfigError(
            "invalid configuration: MESSAGE_TTL_DEFAULT_S="
            f"{settings.message_ttl_default_s}: expected at most "
            f"MESSAGE_TTL_MAX_S={settings.message_ttl_max_s}"
        )
    return settings
