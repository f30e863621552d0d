"""Settings: validated at start, development defaults refused outside dev."""

from __future__ import annotations

import pytest

from services.ingest.settings import IngestSettings
from shared.config import BaseServiceSettings
from shared.exceptions import ConfigError


def test_dev_defaults_are_accepted_in_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RMBG_ENVIRONMENT", "dev")
    assert BaseServiceSettings().s3.bucket == "rmbg"


def test_production_refuses_dev_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RMBG_ENVIRONMENT", "production")
    with pytest.raises(ConfigError) as err:
        BaseServiceSettings()
    message = str(err.value)
    assert "RMBG_S3__ACCESS_KEY" in message and "RMBG_S3__SECRET_KEY" in message and "RMBG_POSTGRES__DSN" in message
    assert "RMBG_AUTH__KEY_PEPPER" in message and "RMBG_AUTH__ENCRYPTION_KEYS" in message


def test_production_with_real_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RMBG_ENVIRONMENT", "production")
    monkeypatch.setenv("RMBG_S3__ACCESS_KEY", "AKIAEXAMPLE")
    monkeypatch.setenv("RMBG_S3__SECRET_KEY", "a-real-secret")
    monkeypatch.setenv("RMBG_POSTGRES__DSN", "postgresql://rmbg:pw@db:5432/rmbg")
    monkeypatch.setenv("RMBG_AUTH__KEY_PEPPER", "a-real-pepper")
    monkeypatch.setenv("RMBG_AUTH__ENCRYPTION_KEYS", "dGhpcy1pcy1hLXJlYWwtMzItYnl0ZS1rZXktLS0tLS0=")
    monkeypatch.setenv("RMBG_IMAGES__MAX_BYTES", "1048576")
    settings = IngestSettings()
    assert settings.images.max_bytes == 1_048_576
    assert settings.postgres.dsn.get_secret_value().endswith("/rmbg")


def test_invalid_values_are_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RMBG_KAFKA__MAX_MESSAGE_BYTES", "5000000")  # above Kafka's 1 MiB default
    with pytest.raises(ValueError, match="max_message_bytes"):
        BaseServiceSettings()


def test_a_fetch_wait_past_the_request_timeout_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # aiokafka would time every held fetch out: refused at start instead of failing every idle poll.
    monkeypatch.setenv("RMBG_KAFKA__FETCH_MAX_WAIT_MS", "20000")
    with pytest.raises(ValueError, match="fetch_max_wait_ms"):
        BaseServiceSettings()
    monkeypatch.setenv("RMBG_KAFKA__REQUEST_TIMEOUT_MS", "30000")
    assert BaseServiceSettings().kafka.fetch_max_wait_ms == 20000


def test_heartbeats_must_fit_three_times_in_a_session(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RMBG_KAFKA__SESSION_TIMEOUT_MS", "6000")
    monkeypatch.setenv("RMBG_KAFKA__HEARTBEAT_INTERVAL_MS", "6000")  # one late beat would expire the member
    with pytest.raises(ValueError, match="heartbeat_interval_ms"):
        BaseServiceSettings()
    monkeypatch.setenv("RMBG_KAFKA__HEARTBEAT_INTERVAL_MS", "2000")
    assert BaseServiceSettings().kafka.heartbeat_interval_ms == 2000


def test_the_allocator_policy_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    assert BaseServiceSettings().memory.reuse_below_mib == 32
    monkeypatch.setenv("RMBG_MEMORY__REUSE_BELOW_MIB", "64")  # older glibc refuses over 32 MiB
    with pytest.raises(ValueError, match="reuse_below_mib"):
        BaseServiceSettings()
