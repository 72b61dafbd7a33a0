"""The history checker (tests/checker) on a Redis Cluster of three primaries.

Recorded load from SDK clients (writers with compare-and-set, subscribers
reading every event from revision 1) through a server on the cluster:

- with no fault, the checker finds nothing;
- with a primary killed (its replica half a second behind, then promoted):
  durable mode (WAIT for a replica) loses no acknowledged write, read back
  from the final logs; fast mode loses the writes acknowledged while the
  replica lagged, and the checker says so (`lost`). In durable mode the
  checker finds nothing either: subscribers are sent only what the replica
  confirmed (docs/backends.md), so none saw a write the failover took back.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.faults.load import Load, history, run_load
from tests.faults.test_redis_cluster_failover import final_logs
from tests.servers import RedisClusterServers, RedisServer, ServerProcess, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
LOAD_S = 6.0
LAG_S = 0.5
# Loss shows as these rules: acknowledged writes missing, their revisions given to
# later writes, and subscribers that saw the lost versions disagreeing with the log.
DATA_LOSS = {"lost", "revision-reused", "stream-disagree", "version", "realtime", "cas"}


def conversations_on(cluster: RedisClusterServers, node: RedisServer) -> int:
    return len(cluster.cli(node, "--scan", "--pattern", "bb:{*}:m").split())


async def test_the_checker_passes_on_a_cluster(
    redis_cluster: RedisClusterServers, tmp_path: Path
) -> None:
    server = ServerProcess(
        tmp_path / "server", "--redis-url", redis_cluster.url, "--durability", "fast"
    ).start()
    try:
        outcome = await run_load(
            [server.address],
            tmp_path,
            Load(conversations=9, writes_per_second=300, subscribers_per_conversation=3),
            lambda: asyncio.sleep(LOAD_S),
        )
    finally:
        server.stop()
    print(
        f"\ncluster: {outcome.acknowledged} writes acknowledged, "
        f"{outcome.verdict.deliveries} deliveries, verdict ok={outcome.verdict.ok}"
    )
    assert outcome.verdict.ok, outcome.verdict.summary()
    assert outcome.acknowledged > 0 and outcome.writes.unknown == 0
    # The conversations were spread: more than one shard held some.
    assert sum(1 for n in redis_cluster.master_nodes() if conversations_on(redis_cluster, n)) > 1


@pytest.mark.parametrize("mode", ["durable", "fast"])
async def test_the_checker_on_a_cluster_losing_a_primary(mode: str, tmp_path: Path) -> None:
    durable = mode == "durable"
    everysec = () if durable else ("--appendonly", "yes", "--appendfsync", "everysec")
    cluster = RedisClusterServers(
        tmp_path / "cluster", replicas=1, durable=durable, extra=everysec
    ).start()
    killed: list[int] = []

    async def fault() -> None:
        await asyncio.sleep(2.0)
        # The primary holding the most conversations, so the loss has something to take.
        victim = max(cluster.master_nodes(), key=lambda n: conversations_on(cluster, n))
        heir = await asyncio.to_thread(cluster.kill_behind_its_replica, victim, LAG_S)
        killed.append(conversations_on(cluster, heir))
        await asyncio.to_thread(wait_for, lambda: cluster.role_of(heir) == "master", 30, "failover")
        victim.start()
        await asyncio.to_thread(wait_for, cluster.healthy, 60, "the cluster, healed", 0.2)
        await asyncio.sleep(2.0)  # writes on the healed cluster

    try:
        server = ServerProcess(
            tmp_path / "server",
            *("--redis-url", cluster.url, "--durability", mode),
            # A wait timeout shorter than the lag: several batches of writes run on
            # the primary after its replica was cut off (test_redis_cluster_failover.py).
            *("--redis-timeout-s", "2", "--redis-wait-timeout-ms", "150"),
        ).start()
        try:
            outcome = await run_load(
                [server.address],
                tmp_path,
                Load(conversations=6, writes_per_second=300, subscribers_per_conversation=2),
                fault,
            )
        finally:
            server.stop()
        missing = await missing_from_final_logs(cluster.url, history(tmp_path))
    finally:
        cluster.stop()
    rules = Counter(v.rule for v in outcome.verdict.violations)
    print(
        f"\n{mode}: {outcome.acknowledged} writes acknowledged, {outcome.writes.unknown} "
        f"unknown, {outcome.verdict.deliveries} deliveries; the killed primary held "
        f"{killed[0]} conversations; acknowledged writes missing from the final logs: "
        f"{missing}; checker violations by rule: {dict(rules) or 'none'}"
    )
    assert killed[0] > 0 and outcome.acknowledged > 0
    if durable:
        # Every acknowledged write is in the final log at its revision, and every
        # subscriber's stream agrees with it.
        assert missing == 0
        assert outcome.verdict.ok, outcome.verdict.summary()
    else:
        assert missing > 0 and rules["lost"] > 0
        assert set(rules) <= DATA_LOSS | {"incomplete", "order", "gap"}


async def missing_from_final_logs(url: str, records: list[dict[str, Any]]) -> int:
    """Acknowledged writes whose value is not in the final log at their revision."""
    invoked = {r["op"]: r for r in records if r["t"] == "invoke"}
    acked = [
        (invoked[r["op"]]["conv"], r["revision"], invoked[r["op"]]["value"])
        for r in records
        if r["t"] == "ok" and invoked[r["op"]]["f"] in ("put", "cas")
    ]
    logs = await final_logs(url, "default", sorted({conv for conv, _, _ in acked}))
    return sum(
        1 for c, rev, value in acked if value.encode() not in {v for _, v in logs[c].get(rev, ())}
    )
