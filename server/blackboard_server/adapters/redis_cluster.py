"""The store on a Redis Cluster: script calls and notifications routed by slot.

All keys of a conversation share a hash tag (redis_codec.py), so each script
call names keys of one slot and runs on the primary that owns it. The slot
map is redis-py's (RedisCluster.nodes_manager); it is read again after a
MOVED reply, a lost node or a dropped subscription.

- Script calls go over one pipelined connection per primary (redis_pipe.py).
  MOVED and ASK mean the script did not run, so the call is sent again to the
  node named (after ASKING, for ASK); so does TRYAGAIN (a slot in migration),
  after a pause, within the call's timeout. A lost connection is not retried:
  the script may have run (the caller retries with its request id).
- Notifications use sharded pub/sub (SSUBSCRIBE, SPUBLISH: Redis >= 7), one
  connection per primary carrying the channels of its slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import structlog
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from blackboard_server.adapters.redis_access import RedisAccess
from blackboard_server.adapters.redis_notify import SHARDED, Book, ChannelReader, Notifications
from blackboard_server.adapters.redis_pipe import Arg, Script, ScriptPipe
from blackboard_server.domain.errors import BackendUnavailable
from blackboard_server.tasks import raise_if_cancelling, stop

log = structlog.get_logger("blackboard.redis")
_REDIRECTS_WITHOUT_PAUSE = 2
_REFRESH_AT_MOST_EVERY_S = 0.1
_TRYAGAIN_PAUSE_S = 0.02
_RECHECK_S = 5.0  # how often the subscriptions' placement is checked anyway


class Topology:
    """The slot map, read again on demand but at most every 100 ms."""

    def __init__(self, client: RedisCluster, timeout_s: float) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._lock = asyncio.Lock()
        self._refreshed_at = 0.0

    def primary(self, key: str | bytes) -> tuple[str, int]:
        """(host, port) of the primary that owns the key's slot."""
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        try:
            node = self._client.nodes_manager.get_node_from_slot(slot)
        except (RedisError, RedisClusterException) as exc:  # SlotNotCoveredError: a hole
            raise BackendUnavailable("redis", str(exc)) from exc
        return node.host, int(node.port)

    async def refresh(self) -> None:
        """Reads the slot map again; never raises (the map just stays as it was)."""
        asked = time.monotonic()
        async with self._lock:
            if self._refreshed_at >= asked - _REFRESH_AT_MOST_EVERY_S:
                return  # refreshed by another caller meanwhile, or very recently
            try:
                async with asyncio.timeout(self._timeout_s):
                    await self._client.nodes_manager.initialize()
            except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
                log.info("redis cluster slot map not refreshed", error=str(exc))
            self._refreshed_at = time.monotonic()


class ClusterPipe:
    """ScriptPipe's evalsha, on the primary that owns the first key's slot."""

    def __init__(
        self,
        topology: Topology,
        access: RedisAccess,
        *,
        timeout_s: float,
        replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        self._topology = topology
        self._access = access
        self._options: dict[str, Any] = {
            "timeout_s": timeout_s,
            "replicas": replicas,
            "wait_timeout_ms": wait_timeout_ms,
        }
        self._pipes: dict[tuple[str, int], ScriptPipe] = {}

    @property
    def waits(self) -> bool:
        """Whether calls wait for replicas."""
        return bool(self._options["replicas"])

    async def evalsha(
        self, script: Script, keys: Sequence[str], *args: Arg, read: bool = False
    ) -> Any:
        at, asking = self._topology.primary(keys[0]), False
        redirects, deadline = 0, time.monotonic() + self._options["timeout_s"]
        while True:
            try:
                return await self._pipe(at).evalsha(script, keys, *args, asking=asking, read=read)
            except ResponseError as exc:
                # TRYAGAIN: the slot is being migrated and its keys are split
                # between the two nodes; the script did not run.
                if str(exc).startswith("TRYAGAIN") and time.monotonic() < deadline:
                    await asyncio.sleep(_TRYAGAIN_PAUSE_S)
                    at, asking = self._topology.primary(keys[0]), False
                    continue
                redirect = _redirection(exc)
                if redirect is None:
                    raise
                redirects += 1
                if time.monotonic() >= deadline:
                    raise BackendUnavailable("redis", f"redirected {redirects} times") from exc
                if redirects > _REDIRECTS_WITHOUT_PAUSE:
                    # The nodes disagree for a moment while a slot changes hands.
                    await asyncio.sleep(_TRYAGAIN_PAUSE_S)
                kind, at = redirect
                asking = kind == "ASK"
                if not asking:
                    await self._topology.refresh()
            except BackendUnavailable:
                await self._topology.refresh()  # the node may be gone: the next call goes on
                raise

    def _pipe(self, at: tuple[str, int]) -> ScriptPipe:
        pipe = self._pipes.get(at)
        if pipe is None:
            pipe = self._pipes[at] = ScriptPipe(self._access.endpoint(*at), **self._options)
        return pipe

    async def aclose(self) -> None:
        for pipe in self._pipes.values():
            await pipe.aclose()


def _redirection(exc: ResponseError) -> tuple[str, tuple[str, int]] | None:
    """("MOVED" | "ASK", (host, port)) from `MOVED 3999 127.0.0.1:6381`; else None."""
    parts = str(exc).split()
    if len(parts) != 3 or parts[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = parts[2].rpartition(":")
    return parts[0], (host.strip("[]"), int(port))


class ShardedNotifications(Notifications):
    """One SSUBSCRIBE connection per primary; channels follow their slots."""

    def __init__(
        self, book: Book, topology: Topology, access: RedisAccess, *, timeout_s: float
    ) -> None:
        super().__init__(book, timeout_s=timeout_s)
        self._topology = topology
        self._access = access
        self._timeout_s = timeout_s
        self._readers: dict[tuple[str, int], ChannelReader] = {}
        self._trouble = asyncio.Event()
        self._mover = asyncio.create_task(self._move_forever(), name="redis-pubsub-mover")

    def reader_for(self, channel: bytes) -> ChannelReader:
        at = self._topology.primary(channel)
        reader = self._readers.get(at)
        if reader is None:
            pool = self._access.pool(*at, socket_connect_timeout=self._timeout_s)
            reader = self._readers[at] = ChannelReader(
                self.book,
                pool.make_connection,
                SHARDED,
                timeout_s=self._timeout_s,
                trouble=self._trouble.set,
                name=f"{at[0]}:{at[1]}",
            )
            self.start(reader)
        return reader

    async def _move_forever(self) -> None:
        """After trouble: reads the slot map and moves channels to their owners."""
        while True:
            raise_if_cancelling()  # a cancel swallowed by a connect (tasks.py)
            # Also now and then without trouble: a slot may move without Redis
            # dropping the subscription on the node that gave it away.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_RECHECK_S):
                    await self._trouble.wait()
            self._trouble.clear()
            if not self.book.watched and not self._readers:
                continue
            await self._topology.refresh()
            try:
                for channel in list(self.book.watched):
                    await self.place(channel)
                for at, reader in list(self._readers.items()):
                    if not reader.channels:
                        del self._readers[at]
                        await self.stop_reader(reader)
            except BackendUnavailable:  # a slot without an owner: try again
                self._trouble.set()
            except Exception:
                log.exception("moving subscriptions failed; trying again")
                self._trouble.set()
            raise_if_cancelling()
            await asyncio.sleep(_REFRESH_AT_MOST_EVERY_S)

    async def aclose(self) -> None:
        await stop(self._mover)
        await super().aclose()


__all__ = ["ClusterPipe", "ShardedNotifications", "Topology"]
