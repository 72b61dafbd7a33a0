"""Recorded load against server replicas, for the fault tests.

`run_load` opens clients with failover (every replica's address), starts
writers and subscribers on a few conversations, runs the fault while they
work, stops the writers, lets every subscriber catch up with the last
acknowledged revision, and returns the checker's verdict on the history.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blackboard_client import Client, RetryPolicy, connect
from tests.checker import History, Verdict, check_file
from tests.checker.history import load
from tests.checker.workload import Counts, Recorded, Subscriber, write_loop

#: Enough to ride out a replica's death or drain: ~6 s of retries.
FAILOVER = RetryPolicy(attempts=10, initial_backoff=0.05, max_backoff=1.0)
CATCH_UP_S = 60.0
CHECK_TIMEOUT_S = 60.0


@dataclass
class Load:
    conversations: int = 5
    writers_per_conversation: int = 4
    writes_per_second: float = 500.0  # in all
    subscribers_per_conversation: int = 10
    keys: int = 8


@dataclass
class Outcome:
    verdict: Verdict
    writes: Counts
    subscribers: list[Subscriber]
    seconds: float
    revisions: dict[str, int] = field(default_factory=dict)  # the last acknowledged, by conv

    @property
    def acknowledged(self) -> int:
        return self.writes.ok


async def run_load(
    addresses: Sequence[str],
    workdir: Path,
    load: Load,
    fault: Callable[[], Awaitable[None]],
    *,
    retry: RetryPolicy = FAILOVER,
    writer_retry: RetryPolicy | None = None,
    timeout: float = 5.0,
) -> Outcome:
    """Runs `fault()` under `load`; the writers stop when it returns.

    Subscribers use `retry`; writers `writer_retry` (default: `retry` too).
    """
    history = History(workdir / "history.jsonl")
    counts = Counts()
    clients: list[Client] = []

    def client(policy: RetryPolicy = retry) -> Client:
        clients.append(connect(list(addresses), retry=policy, timeout=timeout))
        return clients[-1]

    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        admin = client()
        convs = [f"fault-{uuid.uuid4().hex[:8]}" for _ in range(load.conversations)]
        for conv in convs:
            await admin.create_conversation(conv)
        targets: dict[str, float] = defaultdict(lambda: float("inf"))
        subscribers: list[Subscriber] = []
        for conv in convs:
            reader = client()  # one channel per conversation's subscribers
            for i in range(load.subscribers_per_conversation):
                subscribers.append(Subscriber(reader, history, f"{conv}/s{i}", conv))
        readers = [
            asyncio.create_task(s.run(lambda rev, c=s.conv: rev >= targets[c])) for s in subscribers
        ]
        stop = asyncio.Event()
        writers_count = load.conversations * load.writers_per_conversation
        interval = writers_count / load.writes_per_second
        writers = []
        for conv in convs:
            writer_client = client(writer_retry or retry)
            keys = [f"k{i}" for i in range(load.keys)]
            for w in range(load.writers_per_conversation):
                ops = Recorded(writer_client, history, f"{conv}/w{w}", counts)
                writers.append(
                    asyncio.create_task(write_loop(ops, conv, keys, stop, interval_s=interval))
                )
        try:
            await fault()
        finally:
            stop.set()
            await asyncio.gather(*writers)
        last = _last_acknowledged(history, convs)
        targets.update(last)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CATCH_UP_S):
                while not all(s.revision >= last[s.conv] for s in subscribers):
                    await asyncio.sleep(0.05)
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    finally:
        for c in clients:
            with contextlib.suppress(Exception):
                await c.close()
        history.close()
    seconds = loop.time() - started
    verdict = await asyncio.to_thread(check_file, workdir / "history.jsonl", CHECK_TIMEOUT_S)
    return Outcome(verdict, counts, subscribers, seconds, last)


def _last_acknowledged(history: History, convs: list[str]) -> dict[str, int]:
    conv_of: dict[int, str] = {}
    last = dict.fromkeys(convs, 0)
    for record in history.records:
        if record["t"] == "invoke":
            conv_of[record["op"]] = record["conv"]
        elif record["t"] == "ok" and record["revision"]:
            conv = conv_of[record["op"]]
            last[conv] = max(last[conv], record["revision"])
    return last


async def every(seconds: float, duration: float, action: Callable[[int], Awaitable[None]]) -> None:
    """Calls `action(n)` at `seconds`, twice `seconds`... from now, for `duration` seconds
    (on schedule: a slow action does not push the next one back)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    n = 0
    while (n + 1) * seconds <= duration:
        await asyncio.sleep(max(0.0, start + (n + 1) * seconds - loop.time()))
        await action(n)
        n += 1
    await asyncio.sleep(max(0.0, start + duration - loop.time()))


def history(workdir: Path) -> list[dict[str, Any]]:
    """The records of the run in `workdir`, as run_load wrote them."""
    with (workdir / "history.jsonl").open() as lines:
        return list(load(lines))
