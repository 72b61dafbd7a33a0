"""SIGTERM a replica under load with 200 open streams: no unary call fails
(clients move to the other replicas), every stream resumes elsewhere with no
gap, and the replica exits by itself within its grace.

Load: 200 writes/s offered over 10 conversations, 20 subscribers each (200
streams, 4,000 deliveries/s), through SDK clients given all three addresses.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.load import Load, run_load
from tests.servers import ServerProcess

pytestmark = pytest.mark.slow
GRACE_S = 5.0


def open_streams(metrics_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    found = re.search(r"^blackboard_subscribers (\S+)$", text, re.MULTILINE)
    assert found is not None
    return int(float(found.group(1)))


@pytest.fixture
def replicas(make_replicas: Callable[..., list[ServerProcess]]) -> list[ServerProcess]:
    return make_replicas(3, "--shutdown-grace-s", str(GRACE_S), metrics=True)


@pytest.mark.timeout(180)
async def test_sigterm_under_load_fails_no_call_and_every_stream_resumes(
    replicas: list[ServerProcess], tmp_path: Path
) -> None:
    servers = replicas
    victim = servers[-1]
    held: list[int] = []
    exit_codes: list[int] = []

    async def drain_one() -> None:
        await asyncio.sleep(4.0)  # streams are open and spread over the replicas
        held.append(await asyncio.to_thread(open_streams, victim.metrics_port))
        loop = asyncio.get_running_loop()
        started = loop.time()
        victim.terminate()
        assert victim.proc is not None
        exit_codes.append(await asyncio.to_thread(victim.proc.wait, GRACE_S + 10))
        held.append(round(loop.time() - started))
        await asyncio.sleep(4.0)  # the load goes on with two replicas

    load = Load(
        conversations=10,
        writers_per_conversation=2,
        writes_per_second=200.0,
        subscribers_per_conversation=20,
    )
    outcome = await run_load([s.address for s in servers], tmp_path, load, drain_one)
    streams, took_s = held
    print(
        f"\nthe drained replica held {streams} of 200 streams and exited in ~{took_s}s; "
        f"{outcome.acknowledged} writes acknowledged, {outcome.writes.reads} reads, "
        f"{outcome.writes.failed} CAS conflicts, {outcome.writes.unknown} unknown; "
        f"{outcome.verdict.deliveries} deliveries"
    )
    assert streams >= 10, "too few streams on the drained replica to show anything"
    assert exit_codes == [0]
    assert took_s <= GRACE_S + 5  # the grace, and room to exit
    assert outcome.writes.unknown == 0, outcome.writes.errors
    assert outcome.verdict.ok, outcome.verdict.summary()
    assert len(outcome.subscribers) == 200
    assert all(s.revision >= outcome.revisions[s.conv] > 0 for s in outcome.subscribers)
