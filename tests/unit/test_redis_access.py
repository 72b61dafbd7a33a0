"""Redis URLs, credentials and TLS files: parsed, checked, and never shown with a password."""

from __future__ import annotations

from pathlib import Path

import pytest

from blackboard_server.adapters.redis_access import RedisAccess, redact
from blackboard_server.config import Settings, SettingsError


def test_redact_hides_passwords_in_userinfo_and_options() -> None:
    assert redact("redis://bb:pw@h:1/0") == "redis://bb:***@h:1/0"
    assert redact("redis://:pw@h:1") == "redis://:***@h:1"
    assert redact("rediss+cluster://u:p@a:1,b:2/?password=x&ssl_cert_reqs=required") == (
        "rediss+cluster://u:***@a:1,b:2/?password=***&ssl_cert_reqs=required"
    )
    assert redact("redis://h:1/0") == "redis://h:1/0"
    assert redact("unix:///run/redis.sock?db=2") == "unix:///run/redis.sock?db=2"


def test_a_cluster_url_lists_its_seeds_and_keeps_the_credentials() -> None:
    access = RedisAccess.of("redis+cluster://bb:pw@10.0.0.1:7000,10.0.0.2:7001")
    assert access.cluster
    assert access.seeds == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert access.options["username"] == "bb" and access.options["password"] == "pw"
    assert "host" not in access.options and "port" not in access.options
    assert access.redacted == "redis+cluster://bb:***@10.0.0.1:7000,10.0.0.2:7001"


def test_a_tls_cluster_url_turns_tls_on() -> None:
    access = RedisAccess.of("rediss+cluster://a:1,b:2/?ssl_cert_reqs=none")
    assert access.options["ssl"] is True and access.options["ssl_cert_reqs"] == "none"


def test_a_plain_url_is_one_redis() -> None:
    access = RedisAccess.of("redis://h:6380/2")
    assert not access.cluster and access.seeds == ()
    assert access.username == "default"


@pytest.mark.parametrize(
    "url",
    ["redis+cluster://h", "redis+cluster://h:1,x", "redis+cluster://h:1/3", "localhost:6379"],
)
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(SettingsError):
        RedisAccess.of(url)


def test_the_password_file_is_read_and_stripped(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    access = RedisAccess.of("redis://bb@h:1/0", password_file=str(secret))
    assert access.options["password"] == "s3cret"
    assert "s3cret" not in access.redacted
    assert "s3cret" not in repr(access) + repr(RedisAccess.of("redis://bb:s3cret@h:1/0"))
    assert "s3cret" not in repr(access.endpoint())


def test_a_password_in_two_places_an_empty_or_missing_file_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret")
    with pytest.raises(SettingsError, match="in one place"):
        RedisAccess.of("redis://bb:other@h:1/0", password_file=str(secret))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SettingsError, match="empty"):
        RedisAccess.of("redis://h:1/0", password_file=str(empty))
    with pytest.raises(SettingsError, match="cannot read"):
        RedisAccess.of("redis://h:1/0", password_file=str(tmp_path / "missing"))


def test_tls_files_need_a_tls_url_and_must_exist(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    with pytest.raises(SettingsError, match="use rediss://"):
        RedisAccess.of("redis://h:1/0", tls_ca_file=str(ca))
    with pytest.raises(SettingsError, match="no such file"):
        RedisAccess.of("rediss://h:1/0", tls_cert_file=str(tmp_path / "missing.pem"))
    access = RedisAccess.of("rediss://h:1/0", tls_ca_file=str(ca))
    assert access.options["ssl_ca_certs"] == str(ca)


def test_durability_settings_are_validated() -> None:
    base = Settings(redis_url="redis://h:1/0")
    assert base.durability == "durable" and base.durability_check
    with pytest.raises(SettingsError, match="durability"):
        base.replace(durability="sometimes")
    with pytest.raises(SettingsError, match="redis_wait_replicas"):
        base.replace(redis_wait_replicas=-2)
    with pytest.raises(SettingsError, match="redis_wait_timeout_ms"):
        base.replace(redis_wait_timeout_ms=-1)
    with pytest.raises(SettingsError, match="redis_wait_timeout_ms"):
        base.replace(redis_timeout_s=1.0, redis_wait_timeout_ms=1000)
    assert base.replace(durability="fast", redis_wait_replicas=2).redis_wait_replicas == 2
    loaded = Settings.load(["--redis-url", "redis://h:1/0", "--durability-check", "off"], {})
    assert loaded.durability_check is False
