"""Blackboard in one screen: `python -m blackboard_client.demo` (or `make demo`).

An embedded server starts in this process. Two planners campaign for the
"planner" role; the one elected writes the tasks (fenced with its term) and
proclaims that they are ready. Workers each open a session, claim tasks with
locks and write results fenced with the lock's token. One worker is killed
mid-task: it stops renewing its session and vanishes without a goodbye, so
its lock expires with the session and another worker reclaims the task. A
watcher prints the change stream, data and coordination events alike. Last,
the killed worker comes back as a zombie and writes with its stale token.

Exits 0 when every task is done exactly once by a lock holder and nothing the
zombie wrote landed; 1 on any inconsistency.
"""

from __future__ import annotations

import asyncio
import random
import sys
from dataclasses import dataclass, field

from blackboard_client import (
    ChangeType,
    Client,
    CoordinationKind,
    Events,
    Expect,
    Fenced,
    KeyNotFound,
    Lock,
    LockHeld,
    Session,
    connect,
)
from blackboard_server import logs
from blackboard_server.app import serve
from blackboard_server.config import Settings

CONVERSATION = "demo"
TASKS = 8
WORKERS = 3
TTL = 1.0  # seconds: how long a dead worker's lock outlives it


@dataclass
class Crash:
    """What the demo needs to kill a worker mid-task, and to raise its zombie."""

    ready: asyncio.Event = field(default_factory=asyncio.Event)
    session: Session | None = None
    lock: Lock | None = None


async def planner(address: str, name: str) -> None:
    async with connect(address, agent_id=name) as bb, bb.session(CONVERSATION) as s:
        try:
            leadership = await s.campaign("planner", b"planning")
        except LockHeld as held:
            print(f"  {name}: {held.holder_agent_id} was elected planner; standing by")
            return
        async with leadership:
            for n in range(TASKS):
                task = {"title": f"task {n}", "numbers": [n, n + 1]}
                key = f"tasks/{n:02d}"
                await bb.put(CONVERSATION, key, json=task, expect=Expect.absent(), fence=leadership)
            await leadership.proclaim(b"tasks written")
            async with bb.mirror(CONVERSATION, "results/") as results:
                await results.wait_until(lambda view: len(view) == TASKS)


async def task_list(bb: Client) -> list[str]:
    """Waits for the elected planner to say the tasks are written, then lists them."""
    async with bb.observe(CONVERSATION, "planner") as leaders:
        async for leader in leaders:
            if leader is not None and leader.value == b"tasks written":
                break
    return [e.key.removeprefix("tasks/") async for e in bb.iter_range(CONVERSATION, "tasks/")]


async def is_done(bb: Client, task: str) -> bool:
    try:
        await bb.get(CONVERSATION, f"results/{task}")
    except KeyNotFound:
        return False
    return True


async def worker(address: str, name: str) -> int:
    """Does tasks until none is left: returns how many it did."""
    did = 0
    async with connect(address, agent_id=name) as bb, bb.session(CONVERSATION, ttl=TTL) as s:
        await bb.put(CONVERSATION, f"agents/{name}", json="working", session=s)
        pending = await task_list(bb)
        random.shuffle(pending)
        # First try each lock once; then wait for the ones others held.
        for wait in (None, 5 * TTL):
            for task in list(pending):
                if await is_done(bb, task):
                    pending.remove(task)
                    continue
                try:
                    async with s.lock(f"task/{task}", wait=wait) as lock:
                        if not await is_done(bb, task):  # done while we waited?
                            await do_task(bb, name, task, lock)
                            did += 1
                        pending.remove(task)
                except LockHeld:
                    continue  # someone else is on it: come back later
    return did


async def do_task(bb: Client, name: str, task: str, lock: Lock) -> None:
    entry = await bb.get(CONVERSATION, f"tasks/{task}")
    await asyncio.sleep(random.uniform(0, 0.01))  # the "work"
    result = {"worker": name, "answer": sum(entry.json()["numbers"])}
    # Fenced with the lock: refused if the lock was lost meanwhile.
    key = f"results/{task}"
    await bb.put(CONVERSATION, key, json=result, expect=Expect.absent(), fence=lock)


async def doomed_worker(address: str, name: str, crash: Crash) -> None:
    """Claims a task and hangs in the middle of it, until the demo kills it."""
    async with connect(address, agent_id=name) as bb, bb.session(CONVERSATION, ttl=TTL) as s:
        await bb.put(CONVERSATION, f"agents/{name}", json="working", session=s)
        tasks = await task_list(bb)
        for task in random.sample(tasks, len(tasks)):
            if await is_done(bb, task):
                continue
            try:
                async with s.lock(f"task/{task}") as lock:
                    crash.session, crash.lock = s, lock
                    crash.ready.set()
                    await asyncio.Event().wait()  # stuck mid-task
            except LockHeld:
                continue
        raise RuntimeError(f"{name} found no task to die in")


def show(revision: int, agent: str, kind: str, what: str) -> None:
    print(f"  rev {revision:3d}  {agent:9s} {kind:14s} {what}")


async def watcher(address: str) -> None:
    """Prints every event until all results are in and the dead worker has expired."""
    results, expired = 0, False
    async with (
        connect(address, agent_id="watcher") as bb,
        bb.subscribe(CONVERSATION, start_revision=1) as stream,
    ):
        async for item in stream:
            if not isinstance(item, Events):
                continue
            for event in item.events:
                if (c := event.coordination) is not None:
                    token = f" token {c.token}" if c.token else ""
                    show(event.revision, c.agent_id, c.kind.value, f"{c.name}{token}")
                    expired = expired or c.kind is CoordinationKind.AGENT_EXPIRED
                for change in event.changes:
                    what = f"{change.key}  {change.entry.data.decode()}"
                    show(event.revision, event.provenance.agent_id, change.type.value, what)
                    put = change.type is ChangeType.PUT
                    results += put and change.key.startswith("results/")
            if results == TASKS and expired:
                return


async def zombie_write(address: str, name: str, stale: Lock) -> bool:
    """The killed worker, back from the dead, writes with its stale token: refused?"""
    task = stale.name.removeprefix("task/")
    async with connect(address, agent_id=name) as bb:
        try:
            await bb.put(CONVERSATION, f"results/{task}", json={"worker": name}, fence=stale)
        except Fenced as fenced:
            print(
                f"{name} came back and wrote results/{task} with its stale token "
                f"{stale.token}: fenced (the store knows token {fenced.current_token})"
            )
            return True
    print(
        f"NOTE: the server accepted {name}'s late write with the stale token {stale.token}: "
        "fencing of lost locks is not strict on this server yet"
    )
    return False


async def check(address: str, did: dict[str, int], doomed: str, stale: Lock) -> list[str]:
    """Every task done once, by the holder of its lock; the killed worker's task reclaimed."""
    problems = []
    async with connect(address) as bb:
        results = {
            e.key.removeprefix("results/"): e async for e in bb.iter_range(CONVERSATION, "results/")
        }
        agents = [e.key async for e in bb.iter_range(CONVERSATION, "agents/")]
    expected = {f"{n:02d}" for n in range(TASKS)}
    if set(results) != expected:
        problems.append(f"results for {sorted(results)}, expected {sorted(expected)}")
    for task, entry in sorted(results.items()):
        fence = entry.provenance.fence
        if entry.version != 1:
            problems.append(f"results/{task} was written {entry.version} times")
        if fence is None or fence.name != f"task/{task}":
            problems.append(f"results/{task} was written without holding task/{task}")
    reclaimed = results.get(stale.name.removeprefix("task/"))
    fence = reclaimed.provenance.fence if reclaimed else None
    if reclaimed is None or fence is None or fence.token <= stale.token:
        problems.append(f"{stale.name} was not reclaimed from {doomed}")
    else:
        print(
            f"{stale.name}, held by {doomed} when it died (token {stale.token}), "
            f"was redone by {reclaimed.provenance.agent_id} once the lock expired"
        )
    if agents:
        problems.append(f"entries bound to ended sessions are still there: {agents}")
    if sum(did.values()) != TASKS:
        problems.append(f"workers report {sum(did.values())} tasks done, expected {TASKS}")
    for name, count in sorted(did.items()):
        print(f"{name} did {count} tasks")
    return problems


async def main() -> int:
    crash = Crash()
    doomed = f"worker-{WORKERS}"
    logs.configure("warning", "console")  # the server's per-call lines would drown the story
    async with serve(Settings(listen="127.0.0.1:0")) as server, asyncio.timeout(60):
        address = server.address
        async with connect(address) as bb:
            await bb.create_conversation(CONVERSATION)
        async with asyncio.TaskGroup() as agents:
            agents.create_task(watcher(address))
            for name in ("planner-a", "planner-b"):
                agents.create_task(planner(address, name))
            workers = {
                name: agents.create_task(worker(address, name))
                for name in (f"worker-{n}" for n in range(1, WORKERS))
            }
            dying = agents.create_task(doomed_worker(address, doomed, crash))
            await crash.ready.wait()
            session, stale = crash.session, crash.lock
            if session is None or stale is None:
                raise RuntimeError("the doomed worker holds nothing")
            print(f"  -- killing {doomed} in the middle of {stale.name} --")
            session.abandon()  # no more keep-alives, no release, no goodbye
            dying.cancel()
        did = {name: task.result() for name, task in workers.items()}
        problems = await check(address, did, doomed, stale)
        fenced = await zombie_write(address, doomed, stale)
    for problem in problems:
        print("INCONSISTENT:", problem)
    if not problems:
        print(
            f"all tasks done: {TASKS} tasks, each done exactly once by the holder of its lock"
            + ("; the dead worker's late write was fenced" if fenced else "")
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
