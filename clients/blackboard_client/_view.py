"""A local, read-only copy of the keys under a prefix, kept from the stream.

`View` is pure: feed it the items of a subscription with `apply()`. It always
shows one consistent revision: a snapshot is staged until its `Synced` and
only then replaces what the view held.

`Mirror` runs the subscription for you in a task it owns, for the length of
an `async with` block, and lets you wait for a condition on the view.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType

from blackboard_client._model import ChangeType, Entry
from blackboard_client._subscribe import (
    Events,
    Progress,
    Reset,
    Snapshot,
    StreamItem,
    Subscription,
    Synced,
)


class View(Mapping[str, Entry]):
    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._staged: dict[str, Entry] | None = None
        self.revision = 0
        self.synced = False

    def apply(self, item: StreamItem) -> None:
        if isinstance(item, Reset):
            self._staged, self.synced = None, False
        elif isinstance(item, Snapshot):
            if self._staged is None:
                self._staged = {}
            self._staged.update((e.key, e) for e in item.entries)
        elif isinstance(item, Synced):
            self._entries, self._staged = self._staged or {}, None
            self.revision, self.synced = item.revision, True
        elif isinstance(item, Events):
            for event in item.events:
                for change in event.changes:
                    if change.type is ChangeType.PUT:
                        self._entries[change.key] = change.entry
                    else:
                        self._entries.pop(change.key, None)
            self.revision = item.revision
        elif isinstance(item, Progress) and self.synced:
            self.revision = max(self.revision, item.revision)

    def __getitem__(self, key: str) -> Entry:
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<View revision={self.revision} keys={len(self)}>"


class Mirror(Mapping[str, Entry]):
    """`async with client.mirror(conversation, prefix) as tasks:` — a live `View`.

    Reads like a mapping of key -> Entry. Entering waits for the first
    snapshot. If the subscription fails for good, the error is raised by the
    next `wait_until()` and on exit.
    """

    def __init__(self, subscription: Subscription) -> None:
        self.view = View()
        self._subscription = subscription
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    async def _follow(self) -> None:
        try:
            async for item in self._subscription:
                self.view.apply(item)
                async with self._changed:
                    self._changed.notify_all()
        except Exception as error:  # handed to the waiters, raised on exit
            self._error = error
            async with self._changed:
                self._changed.notify_all()

    async def wait_until(
        self,
        predicate: Callable[[View], bool],
        timeout: float | None = None,  # noqa: ASYNC109 (sync callers have no asyncio.timeout)
    ) -> View:
        """Waits until the (synced) view satisfies `predicate`; returns the view."""

        def ready() -> bool:
            return self._error is not None or (self.view.synced and predicate(self.view))

        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(ready)
        if self._error is not None:
            raise self._error
        return self.view

    @property
    def revision(self) -> int:
        return self.view.revision

    def __getitem__(self, key: str) -> Entry:
        return self.view[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.view)

    def __len__(self) -> int:
        return len(self.view)

    async def __aenter__(self) -> Mirror:
        self._task = asyncio.create_task(self._follow())
        try:
            await self.wait_until(lambda _: True)
        except BaseException:
            await self._stop()
            raise
        return self

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._subscription.aclose()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()
        if self._error is not None and exc is None:
            raise self._error
