"""Where the store's Redis is and how to get in: URL, credentials, TLS.

Accepted URLs:

    redis://[user[:password]@]host[:port][/db][?options]     one Redis
    rediss://...                                             one Redis over TLS
    unix:///path/to/redis.sock[?db=N]                        one Redis on a socket
    redis+cluster://[user[:password]@]host:port[,host:port...][?options]
    rediss+cluster://...                                     a Redis Cluster over TLS

A cluster URL lists seed nodes; the rest of the cluster is found from them.
`options` are redis-py's URL options (ssl_ca_certs, ssl_cert_reqs, ...).

A password may come from a file instead of the URL, and TLS files from
settings; both are merged here. Nothing that leaves this module in a log line
or an error carries a password: `redacted` is the form to show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url

from blackboard_server.adapters.redis_pipe import Endpoint
from blackboard_server.config import SettingsError

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_USERINFO = re.compile(r"(?<=://)([^:@/]*):([^@/]*)@")
_SECRET_OPTION = re.compile(r"(?i)(password=)[^&]*")


def redact(url: str) -> str:
    """The URL with any password replaced by ***."""
    return _SECRET_OPTION.sub(r"\1***", _USERINFO.sub(r"\1:***@", url))


@dataclass(frozen=True, slots=True, repr=False)
class RedisAccess:
    """A parsed store URL plus the credentials and TLS files from settings."""

    url: str
    cluster: bool = False
    seeds: tuple[tuple[str, int], ...] = ()  # a cluster's seed nodes
    options: dict[str, Any] = field(default_factory=dict)  # redis-py connection kwargs

    @classmethod
    def of(
        cls,
        url: str,
        *,
        password_file: str = "",
        tls_ca_file: str = "",
        tls_cert_file: str = "",
        tls_key_file: str = "",
    ) -> RedisAccess:
        scheme, sep, rest = url.partition("://")
        if not sep:
            raise SettingsError(f"redis_url: not a URL: {redact(url)!r}")
        cluster = scheme in CLUSTER_SCHEMES
        plain_scheme = CLUSTER_SCHEMES.get(scheme, scheme)
        seeds: tuple[tuple[str, int], ...] = ()
        first = url
        if cluster:
            seeds, first = _seeds(plain_scheme, rest, url)
        try:
            options: dict[str, Any] = dict(parse_url(first))
        except ValueError as exc:
            raise SettingsError(f"redis_url: {exc} ({redact(url)!r})") from None
        tls = options.get("connection_class") is SSLConnection
        if cluster:
            if options.pop("db", 0):
                raise SettingsError("redis_url: a Redis Cluster has only database 0")
            for key in ("host", "port", "connection_class"):
                options.pop(key, None)
            if tls:
                options["ssl"] = True
        if password_file:
            if options.get("password"):
                raise SettingsError(
                    "redis_password_file: the URL has a password too; give it in one place"
                )
            options["password"] = _read_secret(password_file)
        tls_files = {
            "ssl_ca_certs": tls_ca_file,
            "ssl_certfile": tls_cert_file,
            "ssl_keyfile": tls_key_file,
        }
        if any(tls_files.values()) and not tls:
            raise SettingsError(
                "redis_tls_*_file: TLS files are set but the URL does not use TLS; "
                "use rediss:// (or rediss+cluster://)"
            )
        for option, path in tls_files.items():
            if path:
                if not Path(path).is_file():
                    raise SettingsError(f"{option}: no such file: {path}")
                options[option] = path
        return cls(url, cluster, seeds, options)

    @property
    def redacted(self) -> str:
        return redact(self.url)

    def __repr__(self) -> str:  # never the password, wherever it is printed
        return f"RedisAccess({self.redacted!r})"

    @property
    def username(self) -> str:
        return str(self.options.get("username") or "default")

    def client(self, **kwargs: Any) -> Redis | RedisCluster:
        """A redis-py client: RedisCluster for a cluster URL, else Redis."""
        if self.cluster:
            return RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in self.seeds],
                **self.options,
                **kwargs,
            )
        return Redis.from_url(self.url, **self._extra(), **kwargs)

    def pool(self, host: str = "", port: int = 0, **kwargs: Any) -> ConnectionPool:
        """Connections to the Redis, or to one node of the cluster."""
        if not self.cluster:
            return ConnectionPool.from_url(self.url, **self._extra(), **kwargs)
        scheme = "rediss" if self.options.get("ssl") else "redis"
        options = {k: v for k, v in self.options.items() if k != "ssl"}
        return ConnectionPool.from_url(f"{scheme}://{host}:{port}/0", **options, **kwargs)

    def endpoint(self, host: str = "", port: int = 0) -> Endpoint:
        """How the pipelined connection reaches the Redis, or one node of the cluster."""
        return Endpoint.of(self.pool(host, port))

    def _extra(self) -> dict[str, Any]:
        """What settings added to the URL's own options."""
        parsed = parse_url(self.url)
        return {k: v for k, v in self.options.items() if k not in parsed}


def _seeds(scheme: str, rest: str, url: str) -> tuple[tuple[tuple[str, int], ...], str]:
    """The seed nodes of a cluster URL, and a plain URL of the first for its options."""
    netloc, slash, tail = rest.partition("/")
    if not slash:
        netloc, question, query = rest.partition("?")
        tail = question + query
    userinfo, at, hosts = netloc.rpartition("@")
    seeds = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host or not port.isdigit():
            raise SettingsError(f"redis_url: expected host:port, got {item!r} in {redact(url)!r}")
        seeds.append((host.strip("[]"), int(port)))
    first_host, first_port = seeds[0]
    first = f"{scheme}://{userinfo}{at}{first_host}:{first_port}/{tail}"
    return tuple(seeds), first


def _read_secret(path: str) -> str:
    try:
        secret = Path(path).read_text().strip()
    except OSError as exc:
        raise SettingsError(f"redis_password_file: cannot read {path}: {exc.strerror}") from None
    if not secret:
        raise SettingsError(f"redis_password_file: {path} is empty")
    return secret


__all__ = ["RedisAccess", "redact"]
