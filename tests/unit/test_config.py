"""config.Settings: flags beat BB_* variables beat defaults; validated once."""

from __future__ import annotations

import dataclasses

import pytest

from blackboard_server.config import Settings, SettingsError
from blackboard_server.domain.limits import Limits


def test_defaults_are_embedded_on_loopback() -> None:
    s = Settings.load([], {})
    assert s == Settings()
    assert s.embedded and s.listen.startswith("127.0.0.1:")
    assert s.limits == Limits()


def test_load_does_not_read_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BB_RETENTION", "7")
    assert Settings.load([], {}).retention == Settings().retention
    assert Settings.load(None).retention == Settings().retention


def test_environment_beats_default_and_flag_beats_environment() -> None:
    env = {"BB_RETENTION": "50", "BB_TENANT": "acme", "BB_MAX_PAGE_SIZE": "200"}
    from_env = Settings.load([], env)
    assert (from_env.retention, from_env.tenant, from_env.max_page_size) == (50, "acme", 200)
    both = Settings.load(["--retention", "70", "--tenant=blue"], env)
    assert (both.retention, both.tenant, both.max_page_size) == (70, "blue", 200)
    flags_only = Settings.load(["--retention", "70"], {})
    assert (flags_only.retention, flags_only.tenant) == (70, "default")


def test_every_type_is_parsed_from_strings() -> None:
    s = Settings.load(
        ["--redis-timeout-s", "2.5", "--max-txn-ops", "9", "--uvloop", "off"],
        {"BB_DEDUPE_WINDOW_S": "60", "BB_LOG_FORMAT": "json"},
    )
    assert s.redis_timeout_s == 2.5 and isinstance(s.redis_timeout_s, float)
    assert s.dedupe_window_s == 60.0 and isinstance(s.dedupe_window_s, float)
    assert s.max_txn_ops == 9 and isinstance(s.max_txn_ops, int)
    assert s.uvloop is False
    assert s.log_format == "json"
    assert s.limits.max_txn_ops == 9


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("On", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
def test_bool_spellings(raw: str, value: bool) -> None:
    assert Settings.load([], {"BB_UVLOOP": raw}).uvloop is value
    assert Settings.load(["--uvloop", raw], {}).uvloop is value


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"BB_UVLOOP": "maybe"}, "uvloop"),
        ({"BB_UVLOOP": ""}, "uvloop"),
        ({"BB_RETENTION": "ten"}, "retention"),
        ({"BB_RETENTION": "1.5"}, "retention"),
        ({"BB_RETENTION": ""}, "retention"),
        ({"BB_REDIS_TIMEOUT_S": "soon"}, "redis_timeout_s"),
    ],
)
def test_unparseable_environment_values(env: dict[str, str], field: str) -> None:
    with pytest.raises(SettingsError, match=f"^{field}: cannot read"):
        Settings.load([], env)


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--uvloop", "perhaps"], "uvloop"),
        (["--max-page-size", "lots"], "max_page_size"),
        (["--progress-interval-s", "1s"], "progress_interval_s"),
    ],
)
def test_unparseable_flags(argv: list[str], field: str) -> None:
    with pytest.raises(SettingsError, match=f"^{field}: cannot read"):
        Settings.load(argv, {})


def test_a_bad_flag_is_reported_even_when_the_environment_is_good() -> None:
    with pytest.raises(SettingsError, match="retention"):
        Settings.load(["--retention", "x"], {"BB_RETENTION": "5"})


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:50051", "127.0.0.2:1", "localhost:0", "[::1]:50051", "::1:50051"]
)
def test_embedded_mode_listens_on_loopback(listen: str) -> None:
    assert Settings.load(["--listen", listen], {}).listen == listen


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:50051", "[::]:50051", "10.1.2.3:50051", "example.com:50051", "me:1"]
)
def test_embedded_mode_refuses_a_non_loopback_address(listen: str) -> None:
    with pytest.raises(SettingsError, match="loopback"):
        Settings.load([], {"BB_LISTEN": listen})
    # With a store configured it is a real deployment: it may listen anywhere, with auth.
    with pytest.raises(SettingsError, match="needs authentication"):
        Settings.load(["--redis-url", "redis://r:6379/0"], {"BB_LISTEN": listen})
    s = Settings.load(
        ["--redis-url", "redis://r:6379/0", "--auth", "tokens", "--auth-tokens-file", "t.json"],
        {"BB_LISTEN": listen},
    )
    assert not s.embedded and s.listen == listen


@pytest.mark.parametrize("listen", ["50051", ":50051", "host:", "host:port", "127.0.0.1"])
def test_listen_must_be_host_and_port(listen: str) -> None:
    with pytest.raises(SettingsError, match=r"^listen: expected HOST:PORT"):
        Settings.load(["--listen", listen], {})


POSITIVE = [
    "retention",
    "max_key_bytes",
    "max_value_bytes",
    "max_txn_ops",
    "max_page_size",
    "default_page_size",
    "subscriber_max_lag",
    "subscriber_batch",
    "snapshot_chunk",
    "feed_buffer",
    "patch_retries",
]


@pytest.mark.parametrize("name", POSITIVE)
@pytest.mark.parametrize("value", ["0", "-1"])
def test_limits_must_be_positive(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"^{name}: must be positive"):
        Settings.load(["--" + name.replace("_", "-"), value], {})
    with pytest.raises(SettingsError, match=f"^{name}: must be positive"):
        Settings().replace(**{name: int(value)})


def test_default_page_size_must_not_exceed_max_page_size() -> None:
    assert Settings.load(["--default-page-size", "50", "--max-page-size", "50"], {})
    with pytest.raises(SettingsError, match="default_page_size"):
        Settings.load(["--default-page-size", "51", "--max-page-size", "50"], {})
    with pytest.raises(SettingsError, match="default_page_size"):
        Settings.load([], {"BB_MAX_PAGE_SIZE": "10"})  # the default page is 100


def test_a_request_must_fit_the_largest_value() -> None:
    fits = Settings.load(["--max-value-bytes", "1000", "--max-request-bytes", str(1000 + 65536)])
    assert fits.max_request_bytes == 66536
    with pytest.raises(SettingsError, match="max_request_bytes"):
        Settings.load(["--max-value-bytes", "1000", "--max-request-bytes", "66535"], {})


def test_log_format_is_checked() -> None:
    with pytest.raises(SettingsError, match="log_format"):
        Settings.load([], {"BB_LOG_FORMAT": "xml"})


def test_replace_validates_and_settings_are_frozen() -> None:
    s = Settings()
    assert s.replace(retention=5).retention == 5
    with pytest.raises(SettingsError):
        s.replace(listen="0.0.0.0:1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.retention = 1  # type: ignore[misc]


def test_etcd_credentials_are_checked_together() -> None:
    with pytest.raises(SettingsError, match="set one, not both"):
        Settings().replace(etcd_username="u", etcd_password="p", etcd_password_file="f")
    with pytest.raises(SettingsError, match="go together"):
        Settings().replace(etcd_username="u")
    with pytest.raises(SettingsError, match="go together"):
        Settings().replace(etcd_password="p")
    with pytest.raises(SettingsError, match="go together"):
        Settings().replace(etcd_tls_cert_file="c.pem")
    assert "hunter2" not in repr(Settings().replace(etcd_username="u", etcd_password="hunter2"))


def test_quotas_must_not_be_negative() -> None:
    for name in ("quota_bytes", "quota_requests_per_second", "quota_burst"):
        with pytest.raises(SettingsError, match=name):
            Settings().replace(**{name: -1})
    with pytest.raises(SettingsError, match="quota_requests_per_second"):
        Settings().replace(quota_requests_per_second=float("inf"))


@pytest.mark.parametrize("scheme", ["redis+cluster", "rediss+cluster"])
def test_a_cluster_refuses_tenant_wide_quotas(scheme: str) -> None:
    cluster = Settings().replace(redis_url=f"{scheme}://127.0.0.1:7000,127.0.0.1:7001")
    for name in ("quota_conversations", "quota_bytes"):
        with pytest.raises(SettingsError, match=f"^{name}: not supported on a Redis Cluster"):
            cluster.replace(**{name: 10})
    both = dict(quota_conversations=1, quota_bytes=1)
    with pytest.raises(SettingsError, match=r"^quota_conversations, quota_bytes: .*\(docs/quotas"):
        cluster.replace(**both)
    # What a cluster keeps exactly, and every tenant-wide quota on one Redis, stay allowed.
    assert cluster.replace(quota_entries_per_conversation=5).quota.entries_per_conversation == 5
    single = Settings().replace(redis_url="redis://127.0.0.1:7000", **both)
    assert (single.quota.conversations, single.quota.bytes) == (1, 1)


def test_every_field_has_a_flag_and_a_variable() -> None:
    # A value that passes validation for each field, spelled as a string.
    samples = {"bool": "false", "int": "77", "float": "0.5", "str": "info-x"}
    special = {
        "listen": "localhost:7",
        "redis_url": "redis://r:1/0",
        "log_format": "console",
        "log_level": "debug",
        "tracing": "console",
        "max_page_size": "2000",
        "max_request_bytes": str(8 << 20),
        "max_session_ttl_ms": str(600_000),  # must stay above session_ttl_ms's default
        "health_listen": "127.0.0.1:9",
        "durability": "fast",
        "tls_client_auth": "require",
        "auth": "tokens",
    }
    # What a field needs beside it to pass validation.
    tls = ["--tls-cert-file", "c", "--tls-key-file", "k"]
    companions = {
        "tls_cert_file": ["--tls-key-file", "k"],
        "tls_key_file": ["--tls-cert-file", "c"],
        "tls_client_ca_file": [*tls, "--tls-client-auth", "require"],
        "tls_client_auth": [*tls, "--tls-client-ca-file", "ca"],
        "auth": ["--auth-tokens-file", "t"],
        "etcd_username": ["--etcd-password", "pw"],
        "etcd_password": ["--etcd-username", "u"],
        "etcd_password_file": ["--etcd-username", "u"],
        "etcd_tls_cert_file": ["--etcd-tls-key-file", "k.pem"],
        "etcd_tls_key_file": ["--etcd-tls-cert-file", "c.pem"],
    }
    # Several workers need Redis and etcd (given as flags, so the variable is tested alone).
    special["workers"], special["reuse_port"] = "2", "true"
    needs = {"workers": ["--redis-url", "redis://r:1/0", "--etcd-endpoints", "e:2"]}
    defaults = Settings()
    for f in dataclasses.fields(Settings):
        raw = special.get(f.name, samples[str(f.type)])
        extra = companions.get(f.name, []) or needs.get(f.name, [])
        from_env = Settings.load(extra, {"BB_" + f.name.upper(): raw})
        from_flag = Settings.load([*extra, "--" + f.name.replace("_", "-"), raw], {})
        assert getattr(from_env, f.name) == getattr(from_flag, f.name) != getattr(defaults, f.name)


# --- TLS and authentication ------------------------------------------------------------

JWT = ["--auth", "jwt", "--jwt-keys-file", "k.pem", "--jwt-audience", "bb"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--auth", "password"], "auth: expected none"),
        (["--auth", "tokens,none"], "auth: expected none"),
        (["--auth", ","], "auth: expected none"),
        (["--auth", "tokens,tokens", "--auth-tokens-file", "t"], "listed twice"),
        (["--auth", "tokens"], "auth_tokens_file"),
        (["--auth", "jwt", "--jwt-audience", "bb"], "jwt_keys_file"),
        (["--auth", "jwt", "--jwt-keys-file", "k.pem"], "jwt_audience"),
        ([*JWT, "--jwt-algorithms", "none"], "jwt_algorithms"),
        ([*JWT, "--jwt-algorithms", "HS256,PS256"], "jwt_algorithms"),
        ([*JWT, "--jwt-leeway-s", "-1"], "jwt_leeway_s"),
        ([*JWT, "--jwt-tenant-claim", ""], "jwt_tenant_claim"),
        (["--tenant", "a/b"], "tenant: 1-64"),
        (["--tls-cert-file", "c.pem"], "give both"),
        (["--tls-key-file", "k.pem"], "give both"),
        (["--tls-client-auth", "maybe"], "tls_client_auth: expected"),
        (["--tls-client-auth", "optional"], "optional is not supported"),
        (["--tls-client-auth", "require"], "needs tls_cert_file and tls_client_ca_file"),
        (
            ["--tls-cert-file", "c", "--tls-key-file", "k", "--tls-client-ca-file", "ca"],
            "only used with tls_client_auth=require",
        ),
        (["--auth", "mtls", "--tls-cert-file", "c", "--tls-key-file", "k"], "auth=mtls needs"),
    ],
)
def test_auth_settings_are_checked(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.load(argv, {})


def test_auth_defaults_to_none_and_lists_are_read_in_order() -> None:
    assert Settings().auth_methods == [] and not Settings().tls
    mtls = ["--tls-cert-file", "c", "--tls-key-file", "k", "--tls-client-ca-file", "ca"]
    mtls += ["--tls-client-auth", "require"]
    s = Settings.load(
        ["--auth", " mtls, jwt ,tokens", "--auth-tokens-file", "t", *JWT[2:], *mtls], {}
    )
    assert s.auth_methods == ["mtls", "jwt", "tokens"] and s.tls
    # Auth on: any address, with a store (embedded mode stays on loopback).
    assert s.replace(listen="0.0.0.0:1", redis_url="redis://r:1/0").listen == "0.0.0.0:1"


REDIS = ["--redis-url", "redis://127.0.0.1:6399/0", "--etcd-endpoints", "127.0.0.1:2399"]


def test_several_workers_need_redis_etcd_and_a_fixed_port() -> None:
    s = Settings.load([*REDIS, "--workers", "3", "--listen", "127.0.0.1:7000"], {})
    assert (s.workers, s.reuse_port) == (3, False)
    with pytest.raises(SettingsError, match="embedded"):
        Settings.load(["--workers", "2"], {})
    with pytest.raises(SettingsError, match="etcd"):
        Settings.load(["--redis-url", "redis://h:1/0", "--workers", "2"], {})
    with pytest.raises(SettingsError, match="fixed port"):
        Settings.load([*REDIS, "--workers", "2", "--listen", "127.0.0.1:0"], {})
    with pytest.raises(SettingsError, match="workers"):
        Settings.load(["--workers", "0"], {})
    with pytest.raises(SettingsError, match="metrics_port"):
        Settings.load([*REDIS, "--workers", "4", "--metrics-port", "65534"], {})
    assert Settings.load(["--workers", "1"], {}).embedded  # one worker: embedded is fine
