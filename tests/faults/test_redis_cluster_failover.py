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

Subscribers follow every conversation through the failover, each resuming
after an error from the revision after the last it received, as the SDK does.
Once the writers stop they catch up with the final log, and every event they
received is compared with the log's event at its revision:

- durable mode: reads, the change stream's included, return only what the
  replica confirmed (docs/backends.md), so every subscriber's stream is the
  final log exactly: contiguous, no duplicates, each event the log's, every
  acknowledged write in it;
- fast mode: a subscriber may have been sent a revision the failover took back
  (a different write now has that number); the test counts those events.
"""

from __future__ import annotations

import asyncio
import contextlib
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
SUBSCRIBERS_PER_CONVERSATION = 2
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


Change = tuple[str, bytes]  # (key, value) of a put


@dataclass
class Follower:
    """What one subscriber received: each event's puts, by revision, in arrival order."""

    conversation: str
    received: list[tuple[int, frozenset[Change]]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    reset: bool = False

    @property
    def last(self) -> int:
        return self.received[-1][0] if self.received else 0


async def follow(stub: pb_grpc.BlackboardStub, follower: Follower, stop: asyncio.Event) -> None:
    """Subscribes from revision 1; after an error, resumes after the last revision received."""
    while not stop.is_set():
        request = pb.SubscribeRequest(
            conversation_id=follower.conversation, start_revision=follower.last + 1, no_reset=True
        )
        try:
            async for message in stub.Subscribe(request):
                if message.HasField("reset") or message.HasField("snapshot"):
                    follower.reset = True  # never expected: the log is not trimmed here
                for event in message.events.events:
                    puts = frozenset(
                        (c.entry.key, c.entry.value.data)
                        for c in event.changes
                        if c.type == pb.Change.PUT
                    )
                    follower.received.append((event.revision, puts))
                if stop.is_set():
                    return
        except grpc.aio.AioRpcError as error:
            name = error.code().name
            follower.errors[name] = follower.errors.get(name, 0) + 1
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return  # the conversation's creation did not survive the failover
            await asyncio.sleep(0.05)


def diverging(follower: Follower, log: dict[int, set[Change]]) -> int:
    """How many events the subscriber received differ from the final log's at their revision."""
    return sum(1 for revision, puts in follower.received if puts != log.get(revision))


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
) -> dict[str, dict[int, set[Change]]]:
    """Each conversation's log, read from the cluster: revision -> the (key, value)s it put."""
    logs: dict[str, dict[int, set[Change]]] = {}
    async with await RedisStore.connect(url, timeout_s=5.0) as store:
        for conversation in conversations:
            ref = ConversationRef(tenant, conversation)
            head, compact = await store.head(ref)
            assert compact == 0
            events, _ = await store.events(ref, 1, head, head + 1)
            assert [e.revision for e in events] == list(range(1, head + 1))  # contiguous
            logs[conversation] = {
                e.revision: {(c.entry.key, c.entry.data) for c in e.changes if c.entry is not None}
                for e in events
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
        # Shorter than the lag: several batches of writes run on the primary after its
        # replica was cut off (each waits this long for it), and are published.
        redis_wait_timeout_ms=150,
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
            followers = [Follower(c) for c in owners for _ in range(SUBSCRIBERS_PER_CONVERSATION)]
            stop_following = asyncio.Event()
            following = [asyncio.create_task(follow(stub, f, stop_following)) for f in followers]
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
            # Every subscriber catches up with its final log (in fast mode one
            # whose stream ran ahead of the log may never: it is measured below).
            heads = {c: max(log, default=0) for c, log in logs.items()}
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    while any(f.last < heads.get(f.conversation, 0) for f in followers):
                        await asyncio.sleep(0.05)
            stop_following.set()
            for task in following:
                task.cancel()
            await asyncio.gather(*following, return_exceptions=True)

        acked = lost = 0
        for conversation, ledger in ledgers.items():
            log = logs.get(conversation, {})
            for puts in log.values():
                assert {v for _, v in puts} <= ledger.sent  # nothing in the log that nobody wrote
            acked += len(ledger.acked)
            lost += sum(1 for rev, v in ledger.acked if v not in {x for _, x in log.get(rev, ())})
        failures = sum(ledger.failures for ledger in ledgers.values())
        gone = len(ledgers) - len(live(ledgers))
        label = mode if waiting or not durable else "durable without WAIT"
        live_followers = [f for f in followers if not ledgers[f.conversation].conversation_lost]
        received = sum(len(f.received) for f in live_followers)
        diverged = sum(diverging(f, logs[f.conversation]) for f in live_followers)
        behind = sum(1 for f in live_followers if f.last < heads[f.conversation])
        stream_errors: dict[str, int] = {}
        for f in followers:
            for name, count in f.errors.items():
                stream_errors[name] = stream_errors.get(name, 0) + count
        print(
            f"\n{label}: {acked} writes acknowledged, {lost} of them lost, {gone} conversations "
            f"lost; {failures} calls failed (UNAVAILABLE); replica promoted {promoted_s:.1f}s "
            f"after kill -9\n{label}: {len(followers)} subscribers received {received} events, "
            f"{diverged} of them differ from the final log; {behind} subscribers never caught "
            f"up with it; streams that ended with an error (and resumed): {stream_errors or 0}"
        )
        assert acked > 0 and failures > 0  # the kill happened under load
        if waiting:  # every write waited for its replica, and none was lost
            assert waits > 0
            assert lost == 0 and gone == 0
            for f in followers:  # every subscriber saw exactly the final log
                log = logs[f.conversation]
                assert not f.reset
                assert [rev for rev, _ in f.received] == list(range(1, len(log) + 1))
                assert diverging(f, log) == 0
                stream = dict(f.received)
                acked_writes = ledgers[f.conversation].acked
                assert all(any(v == x for _, x in stream[rev]) for rev, v in acked_writes)
        else:  # what was acknowledged while the replica lagged is gone
            assert waits == 0
            assert lost > 0
    finally:
        cluster.stop()
