"""Opening the store's Redis: the first contact, and the parts that talk to it.

The first contact checks what would otherwise fail later and less clearly:
that Redis is reachable, is the kind the URL says (one Redis, or a cluster),
accepts the credentials, lets the user run what the server needs, and is as
durable as the settings ask (redis_durability.py). Then it builds the
pipelined connection for writes and the notification readers: one of each
for one Redis, one per primary for a cluster (redis_cluster.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    NoPermissionError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from blackboard_server.adapters.redis_access import RedisAccess
from blackboard_server.adapters.redis_cluster import ClusterPipe, ShardedNotifications, Topology
from blackboard_server.adapters.redis_durability import Durability, prepare
from blackboard_server.adapters.redis_notify import Book, Notifications, PlainNotifications
from blackboard_server.adapters.redis_pipe import ScriptPipe
from blackboard_server.config import SettingsError
from blackboard_server.domain.errors import BackendUnavailable

# Redis replies that mean "not now" rather than "wrong": the caller may retry.
# LOADING: a restarted Redis still reading its AOF or RDB (redis-py raises its own
# BusyLoadingError, but the pipe parses replies itself); NOREPLICAS: fewer replicas
# than min-replicas-to-write are connected.
TRANSIENT = ("BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "OOM", "LOADING", "NOREPLICAS")


async def open_redis(
    access: RedisAccess, durability: Durability, timeout_s: float, max_connections: int
) -> tuple[Redis | RedisCluster, ScriptPipe | ClusterPipe, Notifications]:
    """redis-py's client (reads), the pipe (writes) and the notification readers."""
    # No retries inside redis-py: a retried script that did run would
    # write twice. Callers retry, with a request id.
    client = access.client(
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        max_connections=max_connections,
    )
    try:
        replicas = await _first_contact(client, access, durability, timeout_s)
    except BaseException:
        await client.aclose()
        raise
    book = Book()
    if isinstance(client, RedisCluster):
        topology = Topology(client, timeout_s)
        cluster_pipe = ClusterPipe(
            topology,
            access,
            timeout_s=timeout_s,
            replicas=replicas,
            wait_timeout_ms=durability.wait_timeout_ms,
        )
        sharded = ShardedNotifications(book, topology, access, timeout_s=timeout_s)
        return client, cluster_pipe, sharded
    pipe = ScriptPipe(
        access.endpoint(),
        timeout_s=timeout_s,
        replicas=replicas,
        wait_timeout_ms=durability.wait_timeout_ms,
    )
    connect = client.connection_pool.make_connection
    return client, pipe, PlainNotifications(book, connect, timeout_s=timeout_s)


def raise_if_transient(exc: ResponseError) -> None:
    # redis-py takes the code (OOM, TRYAGAIN, ...) off the message of the errors
    # it has a class for and keeps it as status_code; the pipe keeps both.
    if (
        isinstance(exc, ReadOnlyError)
        or exc.status_code in TRANSIENT
        or str(exc).startswith(TRANSIENT)
    ):
        raise BackendUnavailable("redis", str(exc)) from exc


async def _first_contact(
    client: Redis | RedisCluster, access: RedisAccess, durability: Durability, timeout_s: float
) -> int:
    """The first contact: reachable, the right kind, credentials accepted, durable enough."""
    where = access.redacted
    try:
        async with asyncio.timeout(timeout_s):
            if isinstance(client, RedisCluster):
                await client.initialize()
            elif _hello_field(await client.execute_command("HELLO"), "mode") == "cluster":  # type: ignore[no-untyped-call]
                raise SettingsError(
                    f"redis_url: the Redis at {where} is a cluster node; "
                    "use redis+cluster://host:port,... (or rediss+cluster://)"
                )
            return await prepare(client, durability, where)
    except (AuthenticationError, AuthenticationWrongNumberOfArgsError) as exc:
        raise SettingsError(
            f"redis_url: the Redis at {where} refused the credentials of user "
            f"{access.username!r}: {exc}"
        ) from None
    except NoPermissionError as exc:
        raise SettingsError(
            f"redis_url: Redis user {access.username!r} at {where} lacks a permission the "
            f"server needs ({exc}); docs/backends.md lists the ACL to give it"
        ) from None
    except ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise SettingsError(
                f"redis_url: the Redis at {where} wants a password: {exc}"
            ) from None
        raise_if_transient(exc)
        raise
    except RedisClusterException as exc:
        if "not enabled" in str(exc):  # a cluster URL that reaches a standalone Redis
            raise SettingsError(f"redis_url: {where} is not a Redis Cluster: {exc}") from None
        raise BackendUnavailable("redis", f"{where}: {exc}") from exc
    except (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError) as exc:
        raise BackendUnavailable("redis", f"{where}: {exc or type(exc).__name__}") from exc


def _hello_field(reply: Any, name: str) -> str:
    """A field of HELLO's reply: a map (RESP3) or a flat list (RESP2)."""
    fields = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))
    value = fields.get(name.encode(), fields.get(name, b""))
    return value.decode() if isinstance(value, bytes) else str(value)


__all__ = ["TRANSIENT", "open_redis", "raise_if_transient"]
