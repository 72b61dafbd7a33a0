"""Ends streams whose client stopped reading, with one watchdog for all of them.

A write to a stream blocks once the client's flow-control window is full, so a
client that stops reading would hold its stream's write forever. Bounding each
write with a timer of its own costs a timer per message, on the path every
delivered event takes; instead each stream notes when its current write began,
and one task looks over all of them about once a second. A write is thus ended
between `timeout_s` and `timeout_s` + that period after it began.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc


@dataclass(eq=False, slots=True)
class Writing:
    """One stream's task, and when its write in progress began (0: none)."""

    task: asyncio.Task[Any]
    since: float = 0.0
    stalled: bool = False


class StallWatch:
    def __init__(self, timeout_s: float) -> None:
        self._timeout = timeout_s
        self._period = min(1.0, timeout_s / 4)
        self._streams: set[Writing] = set()
        self._watchdog: asyncio.Task[None] | None = None

    @contextmanager
    def watching(self) -> Iterator[Writing]:
        """Watches the current task's writes while the block runs."""
        task = asyncio.current_task()
        assert task is not None
        writing = Writing(task)
        self._streams.add(writing)
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        try:
            yield writing
        finally:
            self._streams.discard(writing)

    async def write(
        self, writing: Writing, context: grpc.aio.ServicerContext[Any, Any], message: Any
    ) -> bool:
        """Writes `message`; False if the write stalled past the timeout and was ended."""
        writing.since = time.monotonic()
        try:
            await context.write(message)
        except asyncio.CancelledError:
            if writing.stalled:  # the watchdog's cancellation, not the caller's
                writing.task.uncancel()
                return False
            raise
        finally:
            writing.since = 0.0
        return True

    async def _watch(self) -> None:
        try:
            while self._streams:
                await asyncio.sleep(self._period)
                now = time.monotonic()
                for writing in self._streams:
                    # Non-zero `since` means the task is suspended in that write right
                    # now (it is cleared as soon as the write returns), so the
                    # cancellation lands there and nowhere else.
                    stalled = writing.since and now - writing.since >= self._timeout
                    if stalled and not writing.stalled:
                        writing.stalled = True
                        writing.task.cancel()
        finally:
            self._watchdog = None
