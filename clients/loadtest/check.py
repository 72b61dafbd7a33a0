"""The correctness check at the end of a run.

While the load runs, scenarios note in a `Ledger` what the server acknowledged:
the revision of every put, every appended child, every counter increment.
Afterwards `readback` reads all of it back, and `check` (pure: a function of
what was acknowledged, what was read, and what subscribers saw) says whether
any acknowledged write was lost, any subscriber saw a gap or a revision twice
or out of order, or any counter is off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc

Key = tuple[str, str]  # (conversation, key)


@dataclass
class Ledger:
    """What the server acknowledged during the run."""

    puts: dict[Key, int] = field(default_factory=dict)  # the highest acknowledged revision
    unsure: set[Key] = field(default_factory=set)  # a write failed: it may have applied
    appends: dict[Key, set[str]] = field(default_factory=dict)  # parent -> acknowledged children
    counters: dict[Key, int] = field(default_factory=dict)  # acknowledged increments
    heads: dict[str, int] = field(default_factory=dict)  # the highest acknowledged revision

    def put(self, conv: str, key: str, revision: int) -> None:
        k = (conv, key)
        if revision > self.puts.get(k, 0):
            self.puts[k] = revision
        self._head(conv, revision)

    def failed(self, conv: str, key: str) -> None:
        self.unsure.add((conv, key))

    def appended(self, conv: str, parent: str, child: str, revision: int) -> None:
        self.appends.setdefault((conv, parent), set()).add(child)
        self._head(conv, revision)

    def incremented(self, conv: str, key: str, revision: int) -> None:
        self.counters[(conv, key)] = self.counters.get((conv, key), 0) + 1
        self.put(conv, key, revision)

    def _head(self, conv: str, revision: int) -> None:
        if revision > self.heads.get(conv, 0):
            self.heads[conv] = revision

    def conversations(self) -> set[str]:
        return {c for c, _ in self.puts} | {c for c, _ in self.appends} | set(self.heads)


@dataclass
class Observed:
    """What was read back after the run."""

    mod_revisions: dict[Key, int] = field(default_factory=dict)  # absent keys are missing
    children: dict[Key, set[str]] = field(default_factory=dict)
    counters: dict[Key, int] = field(default_factory=dict)
    heads: dict[str, int] = field(default_factory=dict)  # each conversation's revision


@dataclass
class Verdict:
    ok: bool
    checked: dict[str, int]
    problems: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.ok, "checked": self.checked, "problems": self.problems[:20]}


def check(ledger: Ledger, seen: Observed, streams: Iterable[dict[str, Any]]) -> Verdict:
    problems: list[str] = []
    for k, revision in sorted(ledger.puts.items()):
        got = seen.mod_revisions.get(k)
        if got is None:
            problems.append(f"lost write: {k[0]}/{k[1]} acknowledged at {revision}, now absent")
        elif got < revision or (got != revision and k not in ledger.unsure):
            problems.append(f"lost write: {k[0]}/{k[1]} acknowledged at {revision}, now at {got}")
    children = 0
    for k, acked in sorted(ledger.appends.items()):
        children += len(acked)
        lost = acked - seen.children.get(k, set())
        if lost:
            problems.append(f"lost appends under {k[0]}/{k[1]}: {len(lost)}, e.g. {min(lost)}")
    for k, count in sorted(ledger.counters.items()):
        value = seen.counters.get(k)
        exact = value == count or (k in ledger.unsure and value is not None and value >= count)
        if not exact:
            problems.append(f"counter {k[0]}/{k[1]} is {value}, {count} increments acknowledged")
    subscribers = 0
    for i, s in enumerate(streams):
        subscribers += 1
        head = seen.heads.get(s["conversation"], ledger.heads.get(s["conversation"], 0))
        behind = max(0, head - s["last"])
        if s["missing"] or s["duplicates"] or s["resets"] or s["error"] or behind:
            problems.append(
                f"subscriber {i} of {s['conversation']}: {s['missing']} skipped, "
                f"{behind} never received (last {s['last']} of {head}), {s['duplicates']} "
                f"twice or out of order, {s['resets']} resets, error {s['error']!r}"
            )
    checked = {
        "acknowledged_keys": len(ledger.puts),
        "appended_children": children,
        "counters": len(ledger.counters),
        "subscribers": subscribers,
    }
    return Verdict(not problems, checked, problems)


async def readback(
    stub: pb_grpc.BlackboardAsyncStub,
    ledger: Ledger,
    metadata: tuple[tuple[str, str], ...] = (),
    parallel: int = 32,
) -> Observed:
    """Reads back every key, append parent and counter in the ledger, and each head."""
    seen = Observed()
    gate = asyncio.Semaphore(parallel)

    async def get(k: Key) -> None:
        async with gate:
            try:
                reply = await stub.Get(
                    pb.GetRequest(conversation_id=k[0], key=k[1]), metadata=metadata, timeout=30
                )
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                return
        seen.mod_revisions[k] = reply.entry.mod_revision
        if k in ledger.counters:
            seen.counters[k] = int(reply.entry.value.data or b"0")

    async def children(k: Key) -> None:
        async with gate:
            seen.children[k] = {e.key for e in await _range(stub, k[0], k[1] + "/", metadata)}

    async def head(conv: str) -> None:
        async with gate:
            request = pb.RangeRequest(conversation_id=conv, page_size=1, keys_only=True)
            seen.heads[conv] = (await stub.Range(request, metadata=metadata, timeout=30)).revision

    await asyncio.gather(
        *(get(k) for k in ledger.puts),
        *(children(k) for k in ledger.appends),
        *(head(c) for c in ledger.conversations()),
    )
    return seen


async def _range(
    stub: pb_grpc.BlackboardAsyncStub, conv: str, prefix: str, metadata: tuple[tuple[str, str], ...]
) -> list[pb.Entry]:
    found: list[pb.Entry] = []
    token, revision = "", 0
    while True:
        request = pb.RangeRequest(
            conversation_id=conv, prefix=prefix, keys_only=True, page_token=token, revision=revision
        )
        reply = await stub.Range(request, metadata=metadata, timeout=30)
        found.extend(reply.entries)
        token, revision = reply.next_page_token, reply.revision
        if not token:
            return found
