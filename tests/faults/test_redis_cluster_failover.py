"""kill -9 a Redis Cluster primary under load and let its replica take over.

Writers put to conversations on every shard, each write with a request id,
and record what the server acknowledged (the revision and the value). One
primary is killed, its replica half a second behind (stopped with SIGSTOP
and its link cut just before); once the replica is promoted, the killed node comes back
as a replica and the writers go on until writes succeed again everywhere.
Then the final logs are read straight from the cluster and every
acknowledged write is looked up at its revision:

- durable mode (AOF always on every node, WAIT for one replica per write):
  nothing acknowledged is missing;
- fast mode (no WAIT): whatever replication had not carried to the replica
  when the primary died is gone; the test measures it and prints the figure.

Either way each log must be contiguous and every event must be one of the
writes that was sent (acknowledged, or failed with an unknown outcome).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from blackboard_server.adapters.redis_codec import Keys
from blackboard_server.adapters.redis_store import RedisStore
from blackboard_server.app import serve
from blackboard_server.config import Settings
from blackboard_server.domain.model import ConversationRef
from tests.servers import RedisClusterServers, RedisServer, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
TENANT = "failover"
PER_SHARD = 2  # conversations on each primary
WRITERS_PER_CONVERSATION = 4
LAG_S = 0.5  # how far the replica is behind when its primary is killed


@dataclass
class Ledger:
    """What one conversation's writers sent and what the server acknowledged."""

    acked: list[tuple[int, bytes]] = field(default_factory=list)  # (revision, value)
    sent: set[bytes] = field(default_factory=set)
    failures: int = 0
    last_ok: float = 0.0
    conversation_lost: bool = False


async def writer(
    stub: pb_grpc.BlackboardStub, conversation: str, name: str, ledger: Ledger, stop: asyncio.Event
) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        value = f"{name}-{n}".encode()
        ledger.sent.add(value)
        try:
            reply = await stub.Put(
                pb.PutRequest(
                    conversation_id=conversation,
                    key=f"{name}/{n % 8}",
                    value=pb.Value(data=value),
                    request_id=value.decode(),
                ),
                timeout=5,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                ledger.conversation_lost = True  # its creation did not reach the replica
                return
            assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            ledger.failures += 1
            await asyncio.sleep(0.02)
            continue
        ledger.acked.append((reply.revision, value))
        ledger.last_ok = time.monotonic()


def wait_calls(cluster: RedisClusterServers, node: RedisServer) -> int:
    """How many WAIT commands the node has run."""
    for line in cluster.cli(node, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_wait:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def live(ledgers: dict[str, Ledger]) -> list[Ledger]:
    return [ledger for ledger in ledgers.values() if not ledger.conversation_lost]


def conversations_on_every_shard(cluster: RedisClusterServers) -> dict[str, int]:
    """Conversation id -> the port of its primary, PER_SHARD on each primary."""
    chosen: dict[str, int] = {}
    counts = {n.port: 0 for n in cluster.master_nodes()}
    while min(counts.values()) < PER_SHARD:
        conversation = f"f-{uuid.uuid4().hex[:8]}"
        port = cluster.node_of(Keys.of("bb", ConversationRef(TENANT, conversation)).meta).port
        if counts[port] < PER_SHARD:
            counts[port] += 1
            chosen[conversation] = port
    return chosen


async def final_logs(
    url: str, tenant: str, conversations: list[str]
) -> dict[str, dict[int, set[bytes]]]:
    """Each conversation's log, read from the cluster: revision -> the values its event put."""
    logs: dict[str, dict[int, set[bytes]]] = {}
    async with await RedisStore.connect(url, timeout_s=5.0) as store:
        for conversation in conversations:
            ref = ConversationRef(tenant, conversation)
            head, compact = await store.head(ref)
            assert compact == 0
            events, _ = await store.events(ref, 1, head, head + 1)
            assert [e.revision for e in events] == list(range(1, head + 1))  # contiguous
            logs[conversation] = {
                e.revision: {c.entry.data for c in e.changes if c.entry is not None} for e in events
            }
    return logs


@pytest.mark.parametrize(
    ("mode", "wait_replicas"),
    [("fast", -1), ("durable", -1), ("durable", 0)],
    ids=["fast", "durable", "durable-without-wait"],
)
async def test_a_killed_primary_fails_over_to_its_replica(
    mode: str, wait_replicas: int, tmp_path: Path
) -> None:
    """durable-without-wait measures what AOF with appendfsync always alone loses."""
    durable = mode == "durable"
    waiting = durable and wait_replicas != 0
    # fast: AOF with appendfsync everysec, as deploy/redis/fast.conf.
    everysec = () if durable else ("--appendonly", "yes", "--appendfsync", "everysec")
    cluster = RedisClusterServers(
        tmp_path / "cluster", replicas=1, durable=durable, node_timeout_ms=1000, extra=everysec
    ).start()
    settings = Settings(
        listen="127.0.0.1:0",
        redis_url=cluster.url,
        durability=mode,
        redis_wait_replicas=wait_replicas,
        redis_timeout_s=2.0,
        redis_wait_timeout_ms=500,
        tenant=TENANT,
        uvloop=False,
    )
    try:
        owners = conversations_on_every_shard(cluster)
        victim = cluster.master_nodes()[0]
        heir = cluster.replica_of(victim)
        ledgers = {c: Ledger() for c in owners}
        stop = asyncio.Event()
        async with serve(settings) as server, grpc.aio.insecure_channel(server.address) as ch:
            stub = pb_grpc.BlackboardStub(ch)
            for conversation in owners:
                await stub.CreateConversation(pb.CreateConversationRequest(id=conversation))
            writing = [
                asyncio.create_task(writer(stub, c, f"w{i}", ledgers[c], stop))
                for c in owners
                for i in range(WRITERS_PER_CONVERSATION)
            ]
            await asyncio.sleep(2.0)
            await asyncio.to_thread(cluster.kill_behind_its_replica, victim, LAG_S)
            killed_at = time.monotonic()
            await asyncio.to_thread(
                wait_for, lambda: cluster.role_of(heir) == "master", 30, "failover"
            )
            promoted_s = time.monotonic() - killed_at
            victim.start()  # back as the new primary's replica
            await asyncio.to_thread(wait_for, cluster.healthy, 60, "the cluster, healed", 0.2)
            # Writes succeed again on every shard, the victim's included.
            healed = time.monotonic()
            async with asyncio.timeout(30):
                while min(x.last_ok for x in live(ledgers)) < healed + 0.5:
                    await asyncio.sleep(0.05)
            stop.set()
            await asyncio.gather(*writing)
            waits = sum(wait_calls(cluster, node) for node in cluster.master_nodes())

        logs = await final_logs(
            cluster.url, TENANT, [c for c, x in ledgers.items() if not x.conversation_lost]
        )
        acked = lost = 0
        for conversation, ledger in ledgers.items():
            log = logs.get(conversation, {})
            for values in log.values():
                assert values <= ledger.sent  # nothing in the log that nobody wrote
            acked += len(ledger.acked)
            lost += sum(1 for rev, v in ledger.acked if v not in log.get(rev, set()))
        failures = sum(ledger.failures for ledger in ledgers.values())
        gone = len(ledgers) - len(live(ledgers))
        label = mode if waiting or not durable else "durable without WAIT"
        print(
            f"\n{label}: {acked} writes acknowledged, {lost} of them lost, {gone} conversations "
            f"lost; {failures} calls failed (UNAVAILABLE); replica promoted {promoted_s:.1f}s "
            "after kill -9"
        )
        assert acked > 0 and failures > 0  # the kill happened under load
        if waiting:  # every write waited for its replica, and none was lost
            assert waits > 0
            assert lost == 0 and gone == 0
        else:  # what was acknowledged while the replica lagged is gone
            assert waits == 0
            assert lost > 0
    finally:
        cluster.stop()
