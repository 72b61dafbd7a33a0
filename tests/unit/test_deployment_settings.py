"""The settings for running behind a load balancer: connection age and the health port."""

from __future__ import annotations

import pytest

from blackboard_server.app import server_options
from blackboard_server.config import Settings, SettingsError


def test_connection_age_is_off_by_default() -> None:
    names = [name for name, _ in server_options(Settings())]
    assert "grpc.max_connection_age_ms" not in names
    assert "grpc.max_connection_age_grace_ms" not in names


def test_connection_age_and_grace_become_grpc_options_in_ms() -> None:
    settings = Settings.load(
        [], {"BB_MAX_CONNECTION_AGE_S": "300", "BB_MAX_CONNECTION_AGE_GRACE_S": "2.5"}
    )
    options = dict(server_options(settings))
    assert options["grpc.max_connection_age_ms"] == 300_000
    assert options["grpc.max_connection_age_grace_ms"] == 2_500
    assert options["grpc.max_receive_message_length"] == settings.max_request_bytes


def test_age_without_grace_leaves_the_grace_to_grpc() -> None:
    options = dict(server_options(Settings(max_connection_age_s=60)))
    assert options["grpc.max_connection_age_ms"] == 60_000
    assert "grpc.max_connection_age_grace_ms" not in options


def test_grace_without_age_sets_nothing() -> None:
    names = [name for name, _ in server_options(Settings(max_connection_age_grace_s=5))]
    assert not [name for name in names if "connection_age" in name]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BB_MAX_CONNECTION_AGE_S": "-1"}, "max_connection_age_s"),
        ({"BB_MAX_CONNECTION_AGE_S": "inf"}, "max_connection_age_s"),
        ({"BB_MAX_CONNECTION_AGE_S": "nan"}, "max_connection_age_s"),
        ({"BB_MAX_CONNECTION_AGE_S": "5", "BB_MAX_CONNECTION_AGE_GRACE_S": "-2"}, "grace"),
        ({"BB_HEALTH_LISTEN": "8081"}, "health_listen: expected HOST:PORT"),
        ({"BB_HEALTH_LISTEN": "0.0.0.0:http"}, "health_listen: expected HOST:PORT"),
        ({"BB_HEALTH_LISTEN": "0.0.0.0:70000"}, "health_listen: expected HOST:PORT"),
        ({"BB_HEALTH_LISTEN": "127.0.0.1:50051"}, "must not use the port of listen"),
    ],
)
def test_bad_values_are_refused_at_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.load([], env)


def test_workers_need_a_fixed_health_port() -> None:
    env = {
        "BB_WORKERS": "2",
        "BB_REDIS_URL": "redis://r:6379/0",
        "BB_ETCD_ENDPOINTS": "e:2379",
        "BB_LISTEN": "127.0.0.1:7000",
    }
    with pytest.raises(SettingsError, match="health_listen: several workers"):
        Settings.load([], {**env, "BB_HEALTH_LISTEN": "127.0.0.1:0"})
    assert Settings.load([], {**env, "BB_HEALTH_LISTEN": "127.0.0.1:7001"}).workers == 2


def test_health_listen_is_read_from_flag_and_environment() -> None:
    assert Settings.load([], {"BB_HEALTH_LISTEN": "0.0.0.0:8081"}).health_listen == "0.0.0.0:8081"
    assert Settings.load(["--health-listen", "127.0.0.1:0"], {}).health_listen == "127.0.0.1:0"
    assert Settings().health_listen == ""
