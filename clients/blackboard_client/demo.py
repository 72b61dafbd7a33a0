"""Blackboard in one screen: `python -m blackboard_client.demo` (or `make demo`).

An embedded server starts in this process. A planner writes tasks; three
workers each claim tasks with a compare-and-set (`claims/<task>` must be
absent, so exactly one worker wins each) and append their result under
`results/`; a watcher prints the change stream. Exits 0 when every task is
done exactly once, 1 on any inconsistency.
"""

from __future__ import annotations

import asyncio
import random
import sys

from blackboard_server.app import serve
from blackboard_server.config import Settings

from blackboard_client import ConditionFailed, Events, Expect, connect

CONVERSATION = "demo"
TASKS = 12
WORKERS = 3


async def planner(address: str) -> None:
    async with connect(address, agent_id="planner") as bb:
        for n in range(TASKS):
            task = {"title": f"task {n}", "numbers": [n, n + 1]}
            await bb.put(CONVERSATION, f"tasks/{n:02d}", json=task, expect=Expect.absent())


async def worker(address: str, name: str) -> int:
    """Claims and does tasks until none is left; returns how many claims it lost."""
    lost = 0
    async with connect(address, agent_id=name) as bb:
        async with bb.mirror(CONVERSATION, "tasks/") as tasks:
            await tasks.wait_until(lambda view: len(view) == TASKS)
            todo = list(tasks.items())
        random.shuffle(todo)
        for key, entry in todo:
            task = key.removeprefix("tasks/")
            try:
                await bb.put(CONVERSATION, f"claims/{task}", json=name, expect=Expect.absent())
            except ConditionFailed:
                lost += 1  # another worker got there first
                continue
            await asyncio.sleep(random.uniform(0, 0.01))  # the "work"
            answer = sum(entry.json()["numbers"])
            await bb.append(
                CONVERSATION, "results", json={"task": task, "worker": name, "answer": answer}
            )
    return lost


async def watcher(address: str) -> None:
    """Prints every event from the first revision until all results are in."""
    results = 0
    async with (
        connect(address, agent_id="watcher") as bb,
        bb.subscribe(CONVERSATION, start_revision=1) as stream,
    ):
        async for item in stream:
            if not isinstance(item, Events):
                continue
            for event in item.events:
                for change in event.changes:
                    print(
                        f"  rev {event.revision:3d}  {event.provenance.agent_id:9s} "
                        f"{change.type.value:6s} {change.key}  {change.entry.data.decode()}"
                    )
                    results += change.key.startswith("results/")
            if results == TASKS:
                return


async def check(address: str, lost: dict[str, int]) -> list[str]:
    """Every task claimed once, done once, by the worker that claimed it."""
    async with connect(address) as bb:
        claims = {
            e.key.removeprefix("claims/"): e.json()
            async for e in bb.iter_range(CONVERSATION, "claims/")
        }
        done = [e.json() async for e in bb.iter_range(CONVERSATION, "results/")]
    problems = []
    expected = {f"{n:02d}" for n in range(TASKS)}
    if set(claims) != expected:
        problems.append(f"claimed {sorted(claims)}, expected {sorted(expected)}")
    if sorted(r["task"] for r in done) != sorted(expected):
        problems.append(f"results for {sorted(r['task'] for r in done)}")
    for result in done:
        if claims.get(result["task"]) != result["worker"]:
            problems.append(f"task {result['task']} done by {result['worker']}, not its claimant")
    for name in sorted(lost):
        done_by = sum(1 for claimant in claims.values() if claimant == name)
        print(f"{name} did {done_by} tasks and lost {lost[name]} claims to others")
    return problems


async def main() -> int:
    async with serve(Settings(listen="127.0.0.1:0")) as server, asyncio.timeout(60):
        async with connect(server.address) as bb:
            await bb.create_conversation(CONVERSATION)
        async with asyncio.TaskGroup() as agents:
            agents.create_task(watcher(server.address))
            agents.create_task(planner(server.address))
            workers = {
                name: agents.create_task(worker(server.address, name))
                for name in (f"worker-{n}" for n in range(1, WORKERS + 1))
            }
        problems = await check(server.address, {n: w.result() for n, w in workers.items()})
    for problem in problems:
        print("INCONSISTENT:", problem)
    if not problems:
        print(f"all tasks done: {TASKS} tasks, each claimed and done exactly once")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
