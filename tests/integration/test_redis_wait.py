"""Durable mode with a replica: a write is acknowledged only once the replica has it.

One Redis primary with one replica (both AOF always). While the replica is
stopped, a write runs on the primary but is not confirmed: it fails with
BackendUnavailable and outcome "unknown". Retried with the same request id
once the replica is back, it returns the first attempt's result, now
confirmed, and writes nothing new.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from blackboard_server.adapters.redis_durability import Durability
from blackboard_server.adapters.redis_store import RedisStore
from blackboard_server.domain.errors import BackendUnavailable
from blackboard_server.domain.fingerprint import fingerprint
from blackboard_server.domain.model import ConversationRef, Put, WriteBatch
from tests.servers import RedisServer, require, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def primary_and_replica(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    primary = RedisServer(tmp_path / "primary", durable=True).start()
    replica = RedisServer(
        tmp_path / "replica",
        durable=True,
        extra=("--replicaof", "127.0.0.1", str(primary.port)),
    ).start()
    wait_for(lambda: b"state=online" in info(primary), 20, "the replica in sync")
    yield primary, replica
    if replica.proc is not None and replica.proc.poll() is None:
        os.kill(replica.proc.pid, signal.SIGCONT)
    replica.stop()
    primary.stop()


def info(server: RedisServer) -> bytes:
    return subprocess.run(
        [require("redis-cli"), "-p", str(server.port), "INFO", "replication"],
        capture_output=True,
        check=False,
        timeout=5,
    ).stdout


async def test_a_write_its_replica_does_not_confirm_is_unavailable_with_an_unknown_outcome(
    primary_and_replica: tuple[RedisServer, RedisServer],
) -> None:
    primary, replica = primary_and_replica
    durability = Durability("durable", check=True, wait_replicas=-1, wait_timeout_ms=300)  # auto: 1
    async with await RedisStore.connect(primary.url, timeout_s=2.0, durability=durability) as store:
        ref = ConversationRef("t", f"c-{uuid.uuid4().hex[:8]}")
        await store.create_conversation(ref, {}, 0, 1_000)
        first = WriteBatch((), (Put("a", b"1"),), request_id="r-1")
        assert (await store.commit(ref, first, fingerprint(first), 2_000)).revision == 1

        assert replica.proc is not None
        os.kill(replica.proc.pid, signal.SIGSTOP)
        second = WriteBatch((), (Put("b", b"2"),), request_id="r-2")
        with pytest.raises(BackendUnavailable) as raised:
            await store.commit(ref, second, fingerprint(second), 3_000)
        assert raised.value.metadata == {"outcome": "unknown"}
        assert await store.head(ref) == (2, 0)  # it ran on the primary: hence "unknown"

        os.kill(replica.proc.pid, signal.SIGCONT)
        # Retried as a client would, with the same request id, until the replica
        # (catching up after its pause) confirms.
        for attempt in range(20):
            try:
                again = await store.commit(ref, second, fingerprint(second), 4_000 + attempt)
                break
            except BackendUnavailable as error:
                assert error.metadata == {"outcome": "unknown"}
        assert again.replayed and again.revision == 2
        assert await store.head(ref) == (2, 0)
