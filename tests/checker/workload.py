"""Load that records itself: writers, readers and subscribers driving real
servers through the SDK, each step written to a `History`.

An SDK error is a definite failure when the server answered (a version
conflict, a bad argument): the write did not happen. Anything else (the
replica died, Redis is down, the deadline ran out) is unknown: the write may
have happened, and the checker treats it so.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from blackboard_client import (
    BlackboardError,
    ChangeType,
    Client,
    ConditionFailed,
    Events,
    Expect,
    FailedPrecondition,
    InvalidArgument,
    KeyNotFound,
    NotFound,
)
from tests.checker.history import History

DEFINITE = (FailedPrecondition, InvalidArgument, NotFound)


@dataclass
class Counts:
    ok: int = 0  # writes acknowledged
    reads: int = 0
    failed: int = 0
    unknown: int = 0
    errors: list[str] = field(default_factory=list)  # the unknown outcomes, for reports


def _expect(version: int | None) -> Expect | None:
    if version is None:
        return None
    return Expect.version(version) if version else Expect.absent()


class Recorded:
    """Operations on one client, recorded under one process name."""

    def __init__(
        self, client: Client, history: History, proc: str, counts: Counts, *, pad: str = ""
    ) -> None:
        self.client = client
        self.history = history
        self.proc = proc
        self.counts = counts
        self.pad = pad  # appended to every value written, to make values larger

    def _unknown(self, op: int, error: BaseException) -> None:
        self.history.unknown(op, f"{type(error).__name__}: {error}")
        self.counts.unknown += 1
        self.counts.errors.append(type(error).__name__)

    async def put(self, conv: str, key: str, expect: int | None = None) -> None:
        f = "put" if expect is None else "cas"
        value = f"{self.proc}-{len(self.history.records)}-{random.getrandbits(32):08x}{self.pad}"
        op = self.history.invoke(self.proc, f, conv, key, value, expect)
        try:
            result = await self.client.put(conv, key, value, expect=_expect(expect))
        except ConditionFailed as error:
            self.history.fail(op, str(error), error.current_version)
            self.counts.failed += 1
        except DEFINITE as error:
            self.history.fail(op, str(error))
            self.counts.failed += 1
        except (BlackboardError, TimeoutError) as error:
            self._unknown(op, error)
        else:
            self.history.ok(op, result.revision, result.version)
            self.counts.ok += 1

    async def get(self, conv: str, key: str) -> int | None:
        """Reads `key`; its version, 0 when absent, None when the read failed."""
        op = self.history.invoke(self.proc, "get", conv, key)
        try:
            entry = await self.client.get(conv, key)
        except KeyNotFound:
            self.history.ok(op, 0, 0)
            self.counts.reads += 1
            return 0
        except (BlackboardError, TimeoutError) as error:
            self._unknown(op, error)
            return None
        self.history.ok(op, entry.mod_revision, entry.version, entry.value.data.decode())
        self.counts.reads += 1
        return entry.version


async def write_loop(
    ops: Recorded,
    conv: str,
    keys: list[str],
    stop: asyncio.Event,
    *,
    interval_s: float,
    cas_every: int = 5,
) -> None:
    """Puts at a steady pace; every `cas_every`-th step reads a key and CASes it."""
    loop = asyncio.get_running_loop()
    due = loop.time()
    step = 0
    while not stop.is_set():
        step += 1
        key = random.choice(keys)
        if step % cas_every == 0:
            version = await ops.get(conv, key)
            if version is not None:
                await ops.put(conv, key, expect=version)
        else:
            await ops.put(conv, key)
        due += interval_s
        await asyncio.sleep(max(0.0, due - loop.time()))


class Subscriber:
    """Reads the whole change stream of a conversation from revision 1."""

    def __init__(self, client: Client, history: History, name: str, conv: str) -> None:
        self.client = client
        self.history = history
        self.name = name
        self.conv = conv
        self.revision = 0
        self.advanced = asyncio.Event()

    async def run(self, done: Callable[[int], bool]) -> None:
        """Reads until `done(revision)`; an error ends the stream and is recorded.

        Cancelling it once `done(revision)` holds is a clean end: a stream that
        has nothing new gets nothing to wake it up.
        """
        self.history.subscribed(self.name, self.conv, 1)
        error = ""
        try:
            async with self.client.subscribe(self.conv, start_revision=1) as stream:
                async for item in stream:
                    if isinstance(item, Events):
                        self._record(item)
                    if done(self.revision):
                        break
        except BlackboardError as e:
            error = f"{type(e).__name__}: {e}"
        except asyncio.CancelledError:
            if not done(self.revision):
                error = "cancelled before it was complete"
            raise
        finally:
            self.history.sub_ended(self.name, error)

    def _record(self, item: Events) -> None:
        for event in item.events:
            changes = [
                (c.entry.key, c.entry.value.data.decode(), c.entry.version)
                if c.type == ChangeType.PUT
                else (c.entry.key, None, 0)
                for c in event.changes
            ]
            self.history.delivered(self.name, self.conv, event.revision, changes)
            self.revision = event.revision
        self.advanced.set()
