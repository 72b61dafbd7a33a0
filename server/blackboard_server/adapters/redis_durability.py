"""What the store asks of Redis before it serves: persistence and replication.

durable: every node must log every write to its append-only file before it
answers (appendonly yes, appendfsync always), checked with CONFIG GET unless
the check is turned off; and where primaries have replicas, a write is
acknowledged only after WAIT confirms it on `wait_replicas` of them.
fast: nothing is checked; Redis's own settings decide what a crash loses.
docs/backends.md says what each mode can lose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError

from blackboard_server.config import SettingsError

log = structlog.get_logger("blackboard.redis")
AUTO = -1
_DURABLE = {"appendonly": "yes", "appendfsync": "always"}


@dataclass(frozen=True, slots=True)
class Durability:
    mode: str = "fast"  # fast | durable
    check: bool = True  # durable only: refuse a Redis not configured for it
    wait_replicas: int = 0  # AUTO: durable mode, 1 when every primary has a replica; fast, 0
    wait_timeout_ms: int = 1000

    @property
    def durable(self) -> bool:
        return self.mode == "durable"


async def prepare(client: Redis | RedisCluster, durability: Durability, where: str) -> int:
    """Checks the nodes' persistence if asked; returns how many replicas WAIT asks for."""
    if durability.durable and durability.check:
        await _check_persistence(client, where)
    replicas = durability.wait_replicas
    if replicas == AUTO:
        replicas = await _replicas_of_every_primary(client) if durability.durable else 0
    log.info(
        "redis durability",
        mode=durability.mode,
        checked=durability.durable and durability.check,
        wait_replicas=replicas,
    )
    return replicas


async def _check_persistence(client: Redis | RedisCluster, where: str) -> None:
    try:
        replies: dict[str, Any] = {}
        if isinstance(client, RedisCluster):
            for node in client.get_nodes():  # replicas too: one may become the primary
                replies[node.name] = await client.execute_command(
                    "CONFIG GET", *_DURABLE, target_nodes=node
                )
        else:
            config = await client.execute_command("CONFIG", "GET", *_DURABLE)  # type: ignore[no-untyped-call]
            replies = {where: config}
    except ResponseError as exc:
        raise SettingsError(
            f"durability=durable: cannot check the persistence settings of the Redis at "
            f"{where}: CONFIG GET was refused ({exc}). Allow the server's Redis user "
            "+config|get, or make sure every node has appendonly yes and appendfsync always "
            "and set durability_check=off"
        ) from None
    for name, reply in replies.items():
        settings = _as_dict(reply)
        wrong = {k: settings.get(k, "?") for k, v in _DURABLE.items() if settings.get(k) != v}
        if wrong:
            found = ", ".join(f"{k} {v}" for k, v in wrong.items())
            raise SettingsError(
                f"durability=durable, but the Redis at {name} has {found}: an acknowledged "
                "write could be lost in a crash. Configure appendonly yes and appendfsync "
                "always (deploy/redis/durable.conf), or run with durability=fast, or set "
                "durability_check=off if the check is wrong"
            )


async def _replicas_of_every_primary(client: Redis | RedisCluster) -> int:
    """0 or 1: whether every primary has a replica (0 if that cannot be read).

    A cluster's slot map lists each primary's replicas; primaries that
    disagree (some with, some without) are refused: set redis_wait_replicas.
    One Redis is asked with ROLE, which lists the replicas in sync.
    """
    if isinstance(client, RedisCluster):
        counts = {
            nodes[0].name: len(nodes) - 1
            for nodes in client.nodes_manager.slots_cache.values()
            if nodes
        }
        if len({min(count, 1) for count in counts.values()}) > 1:
            bare = sorted(name for name, count in counts.items() if not count)
            raise SettingsError(
                f"redis_wait_replicas=-1 (auto): the cluster's primaries {', '.join(bare)} have "
                "no replica while others do; set redis_wait_replicas to 0 or 1"
            )
        return min(1, min(counts.values(), default=0))
    try:
        role = await client.execute_command("ROLE")  # type: ignore[no-untyped-call]
    except RedisError as exc:
        log.warning("cannot read the Redis replication role", error=str(exc))
        return 0
    return min(1, len(role[2])) if _text(role[0]) == "master" else 0


def _as_dict(reply: Any) -> dict[str, str]:
    """CONFIG GET's reply as text: a map (RESP3) or a flat list (RESP2)."""
    if isinstance(reply, dict):
        items = list(reply.items())
    else:
        items = list(zip(reply[::2], reply[1::2], strict=True))
    return {_text(k): _text(v) for k, v in items}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


__all__ = ["AUTO", "Durability", "prepare"]
