"""kill -9 a server replica every few seconds while three replicas serve
writers and subscribers: nothing acknowledged is lost, the checker finds no
violation, and every subscriber reaches the last acknowledged revision.

Load: 500 writes/s offered over 5 conversations (20 writers), 50 subscribers
(10 per conversation, each reading every event: 5,000 deliveries/s), all
through SDK clients given the three addresses. A killed replica is started
again on its port at once, so two of three serve while it comes back.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.load import Load, every, history, run_load
from tests.servers import ServerProcess

pytestmark = pytest.mark.slow
LOAD_S = 20.0
KILL_EVERY_S = 4.0


@pytest.fixture
def replicas(make_replicas: Callable[..., list[ServerProcess]]) -> list[ServerProcess]:
    return make_replicas(3)


@pytest.mark.timeout(180)
async def test_killing_replicas_under_load_loses_nothing(
    replicas: list[ServerProcess], tmp_path: Path
) -> None:
    killed: list[float] = []  # when, on the history's clock
    restarts: list[asyncio.Future[ServerProcess]] = []

    async def kill_one(n: int) -> None:
        victim = replicas[n % len(replicas)]
        victim.kill()
        killed.append(time.monotonic())
        # Back on its port as soon as it can start, while the load goes on.
        restarts.append(asyncio.ensure_future(asyncio.to_thread(victim.start)))

    async def kills() -> None:
        await every(KILL_EVERY_S, LOAD_S, kill_one)
        await asyncio.gather(*restarts)

    outcome = await run_load([r.address for r in replicas], tmp_path, Load(), kills)
    rate = outcome.acknowledged / LOAD_S
    print(
        f"\nkilled {len(killed)} replicas; {outcome.acknowledged} writes acknowledged "
        f"(~{rate:.0f}/s), {outcome.writes.failed} failed CAS, {outcome.writes.unknown} unknown "
        f"{sorted(set(outcome.writes.errors))}; {outcome.verdict.deliveries} deliveries; "
        f"{outcome.seconds:.1f}s"
    )
    assert len(killed) >= 4
    assert outcome.verdict.ok, outcome.verdict.summary()
    assert outcome.writes.unknown == 0, outcome.writes.errors
    assert all(s.revision >= outcome.revisions[s.conv] > 0 for s in outcome.subscribers)
    # The load went on through every kill: writes were acknowledged after each one.
    # (Counted, not timed: a loaded machine lowers the rate, not the coverage.)
    acked_at = sorted(r["at"] for r in history(tmp_path) if r["t"] == "ok")
    for begin, end in itertools.pairwise([*killed, float("inf")]):
        assert any(begin < at < end for at in acked_at), "no write acknowledged between kills"
