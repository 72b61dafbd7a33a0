"""Settings: one frozen object, built once from flags and BB_* variables.

Every field is a flag (`--redis-url`) and an environment variable
(`BB_REDIS_URL`); a flag wins over the environment, the environment over the
default below. Nothing else in the server reads os.environ.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from blackboard_server.domain.auth import valid_tenant
from blackboard_server.domain.limits import Limits
from blackboard_server.domain.quota import CLUSTER_QUOTAS, Quota, tenant_wide

ENV_PREFIX = "BB_"


class SettingsError(ValueError):
    """A setting is missing, malformed or contradicts another."""


@dataclass(frozen=True, slots=True)
class Settings:
    listen: str = "127.0.0.1:50051"
    redis_url: str = ""  # empty: embedded mode (in-memory, not durable)
    redis_timeout_s: float = 5.0
    # Redis access and durability (docs/backends.md). URLs: redis://, rediss://,
    # unix://, redis+cluster://host:port,host:port (rediss+cluster:// with TLS).
    redis_password_file: str = ""  # the password of the URL's user, kept out of the URL
    redis_tls_ca_file: str = ""  # rediss:// only: the CA that signed Redis's certificate
    redis_tls_cert_file: str = ""  # rediss:// only: a client certificate, if Redis asks
    redis_tls_key_file: str = ""
    durability: str = "durable"  # durable | fast: what a Redis crash may lose
    durability_check: bool = True  # durable: refuse a Redis without AOF and appendfsync always
    redis_wait_replicas: int = -1  # WAIT for this many replicas; -1: 1 if durable and replicated
    redis_wait_timeout_ms: int = 0  # 0: half of redis_timeout_s
    etcd_endpoints: str = ""  # comma-separated host:port; empty: coordination in memory
    etcd_timeout_s: float = 5.0
    etcd_prefix: str = "/bb"  # every key the server writes in etcd starts with this
    # etcd credentials (docs/backends.md): a user, and TLS with an optional client certificate.
    etcd_username: str = ""
    etcd_password: str = dataclasses.field(default="", repr=False)  # prefer etcd_password_file
    etcd_password_file: str = ""  # the password is the file's content, without a final newline
    etcd_tls_ca_file: str = ""  # setting any etcd_tls_* turns TLS on for every etcd endpoint
    etcd_tls_cert_file: str = ""
    etcd_tls_key_file: str = ""
    replica_id: str = ""  # empty: a random one
    coordination_shards: int = 8  # background work is split in this many etcd elections
    session_ttl_ms: int = 10_000  # a session's TTL when the client names none
    max_session_ttl_ms: int = 300_000
    max_wait_ms: int = 300_000  # the longest a lock or campaign call may wait
    log_level: str = "info"  # debug | info | warning | error; each call logs one line at info
    log_format: str = "auto"  # auto | json | console
    # Observability (docs/operations.md).
    metrics_port: int = 0  # Prometheus /metrics over HTTP on this port; 0: off
    metrics_host: str = ""  # empty: the host of `listen`
    census_interval_s: float = 15.0  # how often the session/lock/leader gauges are counted
    tracing: str = "off"  # off | console | otlp
    otlp_endpoint: str = ""  # empty: the exporter's default (OTEL_EXPORTER_OTLP_ENDPOINT)
    tenant: str = "default"
    # The change log and idempotency.
    retention: int = 10_000  # events kept per conversation for resume and past reads
    dedupe_window_s: float = 86_400.0
    # Limits on input.
    max_key_bytes: int = 512
    max_value_bytes: int = 1 << 20
    max_txn_ops: int = 128
    max_page_size: int = 1000
    default_page_size: int = 100
    max_request_bytes: int = 4 << 20
    patch_retries: int = 32
    # Subscribers.
    subscriber_max_lag: int = 10_000  # events behind the head before a subscriber is ended
    subscriber_batch: int = 1000  # events per stream message at most
    subscriber_write_timeout_s: float = 30.0
    # Under load, a stream gets at most one message per this many ms, carrying
    # every event that came meanwhile; the first event after a quiet spell goes at once.
    subscriber_coalesce_ms: int = 10
    # ...and a conversation's subscribers together get at most about this many stream
    # messages a second: with many subscribers, wake-ups come further apart and each
    # message carries more events, instead of the messages taking every core (0: no bound).
    fanout_messages_per_s: int = 10_000
    # Calls arrived and not yet taken up by the server before gRPC starts refusing
    # (cancelling) new ones; twice this refuses all.
    max_pending_calls: int = 20_000
    # Reads through redis-py in flight at once (per cluster node); more wait their turn.
    redis_connections: int = 64
    snapshot_chunk: int = 500  # entries per snapshot message
    progress_interval_s: float = 5.0
    feed_buffer: int = 4096  # recent events each conversation keeps in memory for fan-out
    # Tenant quotas (docs/quotas.md): defaults for every tenant, 0 is unlimited;
    # quotas_file (TOML) overrides them per tenant and is reloaded when it changes.
    quota_conversations: int = 0
    quota_entries_per_conversation: int = 0
    quota_bytes: int = 0  # keys + values of the live entries of all the tenant's conversations
    quota_subscribers_per_conversation: int = 0  # open streams, counted per replica
    quota_subscribers: int = 0  # open streams of the tenant, counted per replica
    quota_sessions: int = 0  # live sessions of the tenant, counted in the coordinator
    quota_requests_per_second: float = 0.0  # token bucket per tenant, per replica
    quota_burst: int = 0  # bucket size; 0: one second's worth
    quotas_file: str = ""
    # Background work.
    sweep_interval_s: float = 0.2
    shutdown_grace_s: float = 10.0
    uvloop: bool = True
    # Running behind a load balancer (docs/deploy.md). A connection older than
    # max_connection_age_s is asked to go away (GOAWAY), so clients reconnect and
    # spread over new replicas; its calls then get max_connection_age_grace_s to
    # finish before it is closed. 0: off (for the grace: calls may take forever;
    # without an age, the grace does nothing).
    max_connection_age_s: float = 0.0
    max_connection_age_grace_s: float = 0.0
    # HOST:PORT of a plaintext listener serving only grpc.health.v1, for probes
    # that cannot speak TLS or authenticate (Kubernetes gRPC probes); empty: off.
    health_listen: str = ""
    # TLS and authentication (docs/security.md).
    tls_cert_file: str = ""  # PEM certificate chain; empty: plaintext
    tls_key_file: str = ""  # PEM private key of tls_cert_file
    tls_client_ca_file: str = ""  # PEM CAs that sign client certificates
    tls_client_auth: str = "none"  # none | require (needs tls_client_ca_file)
    auth: str = "none"  # none, or methods tried in order: tokens, jwt, mtls (comma-separated)
    auth_tokens_file: str = ""  # JSON: SHA-256 hashes of bearer tokens and their identities
    jwt_keys_file: str = ""  # a PEM public key, a JWKS document, or an HS256 secret
    jwt_algorithms: str = "HS256,RS256,ES256"
    jwt_issuer: str = ""  # empty: not checked
    jwt_audience: str = ""  # required with jwt
    jwt_leeway_s: float = 30.0  # clock skew allowed on exp and nbf
    jwt_tenant_claim: str = "tenant"
    jwt_agent_claim: str = "sub"
    jwt_roles_claim: str = "roles"  # a list, or a space-separated string
    # Several processes on one host (docs/operations.md, "Running several replicas").
    workers: int = 1  # server processes sharing `listen`; more than 1 needs Redis
    reuse_port: bool = False  # bind `listen` with SO_REUSEPORT (set for each worker)

    @property
    def embedded(self) -> bool:
        return not self.redis_url

    @property
    def redis_cluster(self) -> bool:
        """A redis+cluster:// or rediss+cluster:// URL (adapters/redis_access.py)."""
        return self.redis_url.partition("://")[0] in ("redis+cluster", "rediss+cluster")

    @property
    def etcd(self) -> list[str]:
        return [e.strip() for e in self.etcd_endpoints.split(",") if e.strip()]

    @property
    def auth_methods(self) -> list[str]:
        listed = [m.strip() for m in self.auth.split(",") if m.strip()]
        return [] if listed == ["none"] else listed

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)

    @property
    def limits(self) -> Limits:
        return Limits(
            max_key_bytes=self.max_key_bytes,
            max_value_bytes=self.max_value_bytes,
            max_txn_ops=self.max_txn_ops,
            max_page_size=self.max_page_size,
            default_page_size=self.default_page_size,
        )

    @property
    def quota(self) -> Quota:
        return Quota(
            conversations=self.quota_conversations,
            entries_per_conversation=self.quota_entries_per_conversation,
            bytes=self.quota_bytes,
            subscribers_per_conversation=self.quota_subscribers_per_conversation,
            subscribers=self.quota_subscribers,
            sessions=self.quota_sessions,
            requests_per_second=self.quota_requests_per_second,
            burst=self.quota_burst,
        )

    def replace(self, **changes: Any) -> Settings:
        return validated(dataclasses.replace(self, **changes))

    @classmethod
    def load(cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] = {}) -> Settings:
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f.name, f.type, raw)
        parsed = _parser().parse_args(list(argv or []))
        for name, raw in vars(parsed).items():
            if raw is not None:
                values[name] = _parse(name, _field_type(name), raw)
        return validated(cls(**values))


def validated(settings: Settings) -> Settings:
    host, _, port = settings.listen.rpartition(":")
    if not host or not port.isdigit():
        raise SettingsError(f"listen: expected HOST:PORT, got {settings.listen!r}")
    if settings.embedded and not _is_loopback(host):
        raise SettingsError(
            "embedded mode has no authentication and is not durable: it listens on loopback "
            f"only (got {settings.listen!r}); set --redis-url for a real deployment"
        )
    _validate_auth(settings, host)
    if settings.log_format not in ("auto", "json", "console"):
        raise SettingsError("log_format: expected auto, json or console")
    if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise SettingsError("log_level: expected debug, info, warning, error or critical")
    if settings.tracing not in ("off", "console", "otlp"):
        raise SettingsError("tracing: expected off, console or otlp")
    if not 0 <= settings.metrics_port <= 65535:
        raise SettingsError(f"metrics_port: {settings.metrics_port} is out of range")
    for name in (
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
        "coordination_shards",
        "session_ttl_ms",
        "max_session_ttl_ms",
        "max_wait_ms",
        "max_pending_calls",
        "redis_connections",
    ):
        if getattr(settings, name) <= 0:
            raise SettingsError(f"{name}: must be positive")
    for name in ("subscriber_coalesce_ms", "fanout_messages_per_s"):
        if getattr(settings, name) < 0:
            raise SettingsError(f"{name}: must not be negative")
    _validate_workers(settings, int(port))
    if settings.session_ttl_ms > settings.max_session_ttl_ms:
        raise SettingsError("session_ttl_ms: must not exceed max_session_ttl_ms")
    for name in (
        "redis_timeout_s",
        "etcd_timeout_s",
        "dedupe_window_s",
        "subscriber_write_timeout_s",
        "progress_interval_s",
        "sweep_interval_s",
        "shutdown_grace_s",
        "census_interval_s",
    ):
        if not 0 < getattr(settings, name) < float("inf"):
            raise SettingsError(f"{name}: must be a positive number of seconds")
    if not 0 <= int(port) <= 65535:
        raise SettingsError(f"listen: port {port} is out of range")
    _validate_deployment(settings)
    _validate_redis(settings)
    _check_quotas(settings)
    _check_cluster_quotas(settings)
    _check_etcd_credentials(settings)
    if settings.default_page_size > settings.max_page_size:
        raise SettingsError("default_page_size: must not exceed max_page_size")
    if settings.max_request_bytes < settings.max_value_bytes + 64 * 1024:
        raise SettingsError("max_request_bytes: must leave room for a value of max_value_bytes")
    return settings


def _validate_deployment(settings: Settings) -> None:
    """The settings for running behind a load balancer and probes."""
    for name in ("max_connection_age_s", "max_connection_age_grace_s"):
        if not 0 <= getattr(settings, name) < float("inf"):
            raise SettingsError(f"{name}: must be 0 (off) or a positive number of seconds")
    if settings.health_listen:
        host, _, port = settings.health_listen.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise SettingsError(
                f"health_listen: expected HOST:PORT, got {settings.health_listen!r}"
            )
        if int(port) and port == settings.listen.rpartition(":")[2]:
            raise SettingsError("health_listen: must not use the port of listen")
        if settings.workers > 1 and not int(port):
            raise SettingsError("health_listen: several workers share one port: give a fixed one")


def _validate_redis(settings: Settings) -> None:
    if settings.durability not in ("durable", "fast"):
        raise SettingsError("durability: expected durable or fast")
    if settings.redis_wait_replicas < -1:
        raise SettingsError("redis_wait_replicas: expected -1 (auto), 0 or more")
    if not 0 <= settings.redis_wait_timeout_ms < settings.redis_timeout_s * 1000:
        raise SettingsError(
            "redis_wait_timeout_ms: 0 (half of redis_timeout_s), or shorter than redis_timeout_s"
        )


def _check_etcd_credentials(settings: Settings) -> None:
    if settings.etcd_password and settings.etcd_password_file:
        raise SettingsError("etcd_password, etcd_password_file: set one, not both")
    has_password = bool(settings.etcd_password or settings.etcd_password_file)
    if has_password != bool(settings.etcd_username):
        raise SettingsError("etcd_username and a password (etcd_password_file) go together")
    if bool(settings.etcd_tls_cert_file) != bool(settings.etcd_tls_key_file):
        raise SettingsError("etcd_tls_cert_file and etcd_tls_key_file go together")


def _check_cluster_quotas(settings: Settings) -> None:
    names = [f"quota_{name}" for name in tenant_wide(settings.quota)]
    if settings.redis_cluster and names:
        raise SettingsError(f"{', '.join(names)}: {CLUSTER_QUOTAS}")


def _check_quotas(settings: Settings) -> None:
    for f in fields(Settings):
        if f.name.startswith("quota_"):
            value = getattr(settings, f.name)
            if not 0 <= value < float("inf"):
                raise SettingsError(f"{f.name}: must be 0 (unlimited) or a positive number")


AUTH_METHODS = ("tokens", "jwt", "mtls")
JWT_ALGORITHMS = ("HS256", "RS256", "ES256")


def _validate_auth(settings: Settings, host: str) -> None:
    """TLS and authentication settings: complete, and consistent with `listen`."""
    s = settings
    methods = s.auth_methods
    if not valid_tenant(s.tenant):
        raise SettingsError("tenant: 1-64 characters of A-Z a-z 0-9 . _ - (letter or digit first)")
    if s.auth.strip() != "none" and (not methods or any(m not in AUTH_METHODS for m in methods)):
        raise SettingsError("auth: expected none, or a comma-separated list of tokens, jwt, mtls")
    if len(set(methods)) != len(methods):
        raise SettingsError("auth: a method is listed twice")
    if not methods and not _is_loopback(host):
        raise SettingsError(
            f"auth: listening on {s.listen!r} needs authentication; set --auth "
            "(tokens, jwt or mtls) or listen on loopback"
        )
    if bool(s.tls_cert_file) != bool(s.tls_key_file):
        raise SettingsError("tls_cert_file and tls_key_file: give both, or neither")
    if s.tls_client_auth == "optional":
        raise SettingsError(
            "tls_client_auth: optional is not supported (gRPC's Python server either "
            "requires a client certificate or does not ask for one); use none or require"
        )
    if s.tls_client_auth not in ("none", "require"):
        raise SettingsError("tls_client_auth: expected none or require")
    if s.tls_client_auth == "require" and not (s.tls and s.tls_client_ca_file):
        raise SettingsError("tls_client_auth=require needs tls_cert_file and tls_client_ca_file")
    if s.tls_client_ca_file and s.tls_client_auth == "none":
        raise SettingsError("tls_client_ca_file is only used with tls_client_auth=require")
    if "mtls" in methods and s.tls_client_auth != "require":
        raise SettingsError("auth=mtls needs tls_client_auth=require")
    if "tokens" in methods and not s.auth_tokens_file:
        raise SettingsError("auth=tokens needs auth_tokens_file")
    if "jwt" in methods:
        if not s.jwt_keys_file:
            raise SettingsError("auth=jwt needs jwt_keys_file")
        if not s.jwt_audience:
            raise SettingsError(
                "auth=jwt needs jwt_audience (a token for another service must fail)"
            )
        algorithms = [a.strip() for a in s.jwt_algorithms.split(",") if a.strip()]
        if not algorithms or any(a not in JWT_ALGORITHMS for a in algorithms):
            raise SettingsError(
                "jwt_algorithms: expected a comma-separated list of HS256, RS256, ES256"
            )
        if not 0 <= s.jwt_leeway_s <= 600:
            raise SettingsError("jwt_leeway_s: expected 0 to 600 seconds")
        for name in ("jwt_tenant_claim", "jwt_agent_claim", "jwt_roles_claim"):
            if not getattr(s, name):
                raise SettingsError(f"{name}: must not be empty")


def _validate_workers(settings: Settings, port: int) -> None:
    if not 1 <= settings.workers <= 256:
        raise SettingsError("workers: must be between 1 and 256")
    if settings.workers == 1:
        return
    if settings.embedded:
        raise SettingsError(
            "workers: embedded mode keeps state in process memory, so several workers "
            "would each see a different blackboard; set --redis-url to run more than one"
        )
    if not settings.etcd:
        raise SettingsError(
            "workers: sessions, locks and elections must be shared by the workers: "
            "set --etcd-endpoints to run more than one"
        )
    if port == 0:
        raise SettingsError("workers: several workers share one port: give listen a fixed port")
    if settings.metrics_port and settings.metrics_port + settings.workers - 1 > 65535:
        raise SettingsError("metrics_port: each worker takes the next port, past 65535")


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _field_type(name: str) -> str:
    return next(str(f.type) for f in fields(Settings) if f.name == name)


def _parse(name: str, kind: object, raw: str) -> Any:
    kind = str(kind)
    try:
        if kind == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise SettingsError(f"{name}: cannot read {raw!r} as {kind}") from None
    return raw


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blackboard-server",
        description="Blackboard: a coordination server for teams of AI agents.",
        epilog="Every flag can also be set as BB_<NAME> in the environment.",
    )
    defaults = Settings()
    for f in fields(Settings):
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            metavar=str(f.type).upper(),
            help=f"(default: {getattr(defaults, f.name)!r})",
        )
    return parser
