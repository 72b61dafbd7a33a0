"""Stopping background tasks whose cancellation may be lost.

On Python 3.11 a cancel that lands as an awaited call completes can be
swallowed inside `asyncio.wait_for` (and `asyncio.timeout`), which redis-py
uses: the task is left "cancelling" but running, and whoever waits for it
waits forever. Loops check `raise_if_cancelling()` each turn; owners end their
tasks with `stop()`, which cancels again until the task is done.
"""

from __future__ import annotations

import asyncio
import contextlib


def raise_if_cancelling() -> None:
    """Raises CancelledError if this task was cancelled, even if the cancel was swallowed."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def stop(task: asyncio.Task[None]) -> None:
    """Cancels `task` and waits until it is done, cancelling again in case a cancel was lost."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    with contextlib.suppress(asyncio.CancelledError):
        await task
