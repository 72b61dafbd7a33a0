"""The fan-out feed's waking rules: in order, a chunk per loop pass, paced by load."""

from __future__ import annotations

import asyncio

from blackboard_server.domain.model import ConversationRef, Event, Provenance
from blackboard_server.services.hub import WAKE_CHUNK, Feed, Releaser

REF = ConversationRef("t", "c")


def event(revision: int) -> Event:
    return Event(revision, 0, Provenance(agent_id="agent"), ())


async def test_a_tick_wakes_waiters_in_order_one_chunk_per_loop_pass() -> None:
    feed = Feed(REF, head=0, capacity=16)
    woken: list[int] = []

    async def waiter(i: int) -> None:
        await feed.wait(0)
        woken.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(3 * WAKE_CHUNK + 5)]
    await asyncio.sleep(0)  # every waiter is queued
    assert woken == []
    feed.advance(event(1), b"")
    # The first chunk is woken in the pass after the tick, and its tasks run in the
    # pass after that, while the next chunk is woken; and so on.
    progress = []
    for _ in range(6):
        await asyncio.sleep(0)
        progress.append(len(woken))
    assert progress == [
        0,
        WAKE_CHUNK,
        2 * WAKE_CHUNK,
        3 * WAKE_CHUNK,
        3 * WAKE_CHUNK + 5,
        3 * WAKE_CHUNK + 5,
    ]
    assert woken == sorted(woken)
    await asyncio.gather(*tasks)


async def test_feeds_sharing_a_releaser_wake_one_chunk_per_pass_between_them() -> None:
    releaser = Releaser()
    feeds = [Feed(ConversationRef("t", f"c{i}"), 0, 16, releaser=releaser) for i in range(3)]
    woken: list[tuple[int, int]] = []

    async def waiter(f: int, i: int) -> None:
        await feeds[f].wait(0)
        woken.append((f, i))

    tasks = [asyncio.create_task(waiter(f, i)) for f in range(3) for i in range(WAKE_CHUNK)]
    await asyncio.sleep(0)
    for feed in feeds:  # three conversations written to in the same pass
        feed.advance(event(1), b"")
    progress = []
    for _ in range(5):
        await asyncio.sleep(0)
        progress.append(len(woken))
    assert progress == [0, WAKE_CHUNK, 2 * WAKE_CHUNK, 3 * WAKE_CHUNK, 3 * WAKE_CHUNK]
    assert [f for f, _ in woken] == sorted(f for f, _ in woken)  # in the order ticked
    await asyncio.gather(*tasks)


async def test_a_cancelled_waiter_does_not_hold_up_the_others() -> None:
    feed = Feed(REF, head=0, capacity=16)
    first = asyncio.create_task(feed.wait(0))
    second = asyncio.create_task(feed.wait(0))
    await asyncio.sleep(0)
    first.cancel()
    feed.advance(event(1), b"")
    await asyncio.wait_for(second, 1)
    assert first.cancelled() and second.done() and not second.cancelled()


async def test_turn_waits_for_the_next_wake_up_not_the_last() -> None:
    feed = Feed(REF, head=0, capacity=16, coalesce_s=0.2)
    waiting = asyncio.create_task(feed.wait(0))
    await asyncio.sleep(0)
    feed.advance(event(1), b"")  # the first event after a quiet spell: at once
    await asyncio.wait_for(waiting, 1)
    feed.advance(event(2), b"")  # within coalesce_s of that wake-up: held
    turn = asyncio.create_task(feed.turn())
    await asyncio.sleep(0.05)
    assert not turn.done()
    await asyncio.wait_for(turn, 1)  # released by the wake-up due at 0.2 s


def test_many_subscribers_space_the_wake_ups_out() -> None:
    feed = Feed(REF, head=0, capacity=16, coalesce_s=0.01, messages_per_s=10_000)
    feed.subscribers = 10
    assert feed.wake_interval == 0.01
    feed.subscribers = 1000
    assert feed.wake_interval == 0.1
    unbounded = Feed(REF, head=0, capacity=16, coalesce_s=0.01)
    unbounded.subscribers = 1000
    assert unbounded.wake_interval == 0.01


def test_since_reads_from_the_right_end_of_the_buffer() -> None:
    feed = Feed(REF, head=0, capacity=8)
    for revision in range(1, 21):
        feed.advance(event(revision), str(revision).encode())
    held = feed.since(17, 10)
    assert held is not None
    events, wire = held
    assert [e.revision for e in events] == [18, 19, 20]
    assert wire == [b"18", b"19", b"20"]
    assert feed.since(20, 10) == ([], [])
    assert feed.since(11, 10) is None  # 12 is no longer held (capacity 8: 13..20)
    limited = feed.since(12, 2)
    assert limited is not None
    assert [e.revision for e in limited[0]] == [13, 14]
