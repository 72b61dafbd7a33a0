"""Every key a store script touches carries its conversation's hash tag.

That is what lets the scripts run unchanged on a Redis Cluster: a script may
only touch keys of one slot. Redis's MONITOR shows each command a script
runs; a scenario that takes every branch of every script is recorded and
each key (and notification channel) checked against the conversation's tag.

The one exception is on a single Redis: there the scripts also keep the
tenant's usage hash (exact tenant quotas, docs/quotas.md). On a cluster they
keep the conversation's own usage hash in its place, so the scenario is
recorded there too, on every primary, and must not leave the slot at all.
"""

from __future__ import annotations

import re
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from blackboard_server.adapters.redis_codec import Keys, usage_key
from blackboard_server.adapters.redis_store import RedisStore
from blackboard_server.domain.fingerprint import fingerprint
from blackboard_server.domain.model import (
    AppendChild,
    Compare,
    ConversationRef,
    Coordination,
    CoordinationKind,
    Delete,
    DeleteSessionEntries,
    Fence,
    FenceKind,
    Operator,
    Put,
    Target,
    WriteBatch,
)
from blackboard_server.domain.quota import StoreQuota
from tests.servers import RedisClusterServers, RedisServer

# Commands whose every argument is a key; for the others only the first is.
ALL_KEYS = {"UNLINK", "DEL", "EXISTS"}
_COMMAND = re.compile(r"\[\d+ lua\] (.*)$")
_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')


class Monitor:
    """A MONITOR connection, read by a thread until closed."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._sock.sendall(b"MONITOR\r\n")
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buffer = b""
        try:
            while chunk := self._sock.recv(65536):
                buffer += chunk
                *complete, buffer = buffer.split(b"\r\n")
                self.lines += [line.decode("utf-8", "replace") for line in complete]
        except OSError:
            pass

    def script_commands(self) -> list[tuple[list[str], list[str]]]:
        """(the keys an EVALSHA declared, a command its script ran), in order."""
        commands = []
        declared: list[str] = []
        for line in self.lines:
            found = _COMMAND.search(line)
            if found:
                commands.append((declared, _ARG.findall(found.group(1))))
                continue
            args = _ARG.findall(line)
            if args and args[0].upper() in ("EVALSHA", "EVAL"):
                declared = args[3 : 3 + int(args[2])]
        return commands

    def close(self) -> None:
        self._sock.close()
        self._thread.join(5)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


# Quotas high enough never to refuse, so the scripts take their checking paths.
QUOTA = StoreQuota(entries_per_conversation=1_000, bytes=1_000_000)


async def commit(store: RedisStore, ref: ConversationRef, batch: WriteBatch, now: int) -> None:
    await store.commit(ref, batch, fingerprint(batch), now, QUOTA)


@pytest.mark.parametrize("backend", ["redis", "redis-cluster"])
async def test_every_key_a_script_touches_carries_the_conversation_tag(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    ref = ConversationRef("tenant-a", f"c-{uuid.uuid4().hex[:8]}")
    tag = "{" + f"{ref.tenant}/{ref.id}" + "}"
    prefix = f"p{uuid.uuid4().hex[:8]}"
    url: str
    ports: list[int]
    if backend == "redis":
        own = request.getfixturevalue("own_redis")
        url, ports = own.url, [own.port]
    else:
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        url, ports = cluster.url, [node.port for node in cluster.master_nodes()]
    monitors = [Monitor(port) for port in ports]
    try:
        async with await RedisStore.connect(url, retention=3, prefix=prefix) as store:
            await store.create_conversation(ref, {"topic": "t"}, 0, 1_000)
            await store.watch(ref)
            fence = Fence(FenceKind.LOCK, "job", 7)
            hold = WriteBatch(
                (),
                (),
                coordination=Coordination(CoordinationKind.LOCK_ACQUIRED, "a", "s1", "job", 7),
                marks=((fence.mark, 7),),
            )
            await commit(store, ref, hold, 1_500)
            batches = [
                WriteBatch((), (Put("a", b"1", ttl_ms=10),), request_id="r1"),
                WriteBatch((), (Put("a", b"1", ttl_ms=10),), request_id="r1"),  # replayed
                WriteBatch((), (Put("b", b"2", session_id="s1"),), fence=fence),
                WriteBatch((), (AppendChild("log", b"x"),)),
                WriteBatch(
                    (Compare("a", Target.VERSION, Operator.EQUAL, 99),),
                    (Delete("a"),),
                    (Put("c", b"3"),),
                ),
                WriteBatch((), (Put("b", b"4"),), fence=Fence(FenceKind.LOCK, "job", 6)),
                WriteBatch((), (DeleteSessionEntries("s1"),)),
                WriteBatch((), (Delete("c"),)),
            ]
            for n, batch in enumerate(batches):
                try:
                    await commit(store, ref, batch, 2_000 + n)
                except Exception as error:  # the fenced one; nothing else may fail
                    assert batch.fence is not None and batch.fence.token == 6, error
            await store.read(ref, "", "", 10)
            await store.read(ref, "a", "", 1, exact=True)
            head, compact = await store.head(ref)
            await store.events(ref, compact + 1, head, 10)
            assert await store.expire_due(100_000, 10) >= 1
            await store.unwatch(ref)
            await store.delete_conversation(ref)
    finally:
        for monitor in monitors:
            monitor.close()

    commands = [c for monitor in monitors for c in monitor.script_commands()]
    ran = {command[0].upper() for _, command in commands}
    publish = "PUBLISH" if backend == "redis" else "SPUBLISH"
    # The scenario took the paths that write, trim, publish, expire and delete.
    assert {"XADD", publish, "ZADD", "HDEL", "UNLINK", "ZRANGEBYLEX"} <= ran
    assert any(c[0].upper() == "XADD" and "MINID" in c for _, c in commands)  # the trim
    keys = Keys.of(prefix, ref)
    # Only on one Redis: the tenant's usage hash, in its own slot.
    allowed = {usage_key(prefix, ref.tenant)} if backend == "redis" else set()
    # One slot per script call: every key (and channel) in the slot of its first key.
    strays = [
        (declared, command)
        for declared, command in commands
        for key in (command[1:] if command[0].upper() in ALL_KEYS else command[1:2])
        if key not in allowed and key_slot(key.encode()) != key_slot(declared[0].encode())
    ]
    assert strays == []
    touched = {command[1] for _, command in commands}
    # The scripts kept usage: the tenant's on one Redis, the conversation's own on a cluster.
    assert (usage_key(prefix, ref.tenant) in touched) == (backend == "redis")
    assert (keys.own_usage in touched) == (backend == "redis-cluster")
    # ... and the conversation's own goes with the conversation.
    unlinked = {k for _, command in commands if command[0].upper() == "UNLINK" for k in command}
    assert (keys.own_usage in unlinked) == (backend == "redis-cluster")
    # A conversation's scripts name its keys only; the tenant index is a script of its own.
    index = f"{prefix}:conversations:{ref.tenant}"
    assert {k for declared, _ in commands for k in declared} - {index} - allowed == {
        k for declared, _ in commands for k in declared if tag in k
    }
    assert keys.meta in touched
