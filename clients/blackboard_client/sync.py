"""The SDK for code without an event loop: the async client, run on a thread.

    from blackboard_client import sync

    with sync.connect("127.0.0.1:50051", agent_id="script") as bb:
        bb.put("demo", "notes/1", json={"text": "hi"})
        for entry in bb.iter_range("demo", "notes/"):
            print(entry.key, entry.json())
        with bb.subscribe("demo") as stream:
            for item in stream:
                ...

Nothing here repeats the client's methods. A proxy runs every call on a
private event loop thread: a coroutine's result is returned, an async
iterator becomes an iterator, an async context manager a context manager.
Values (entries, results, errors) come back unchanged.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar

from blackboard_client._client import connect as _connect_async

__all__ = ["SyncProxy", "connect"]

T = TypeVar("T")


class _LoopThread:
    """An event loop running on a daemon thread until `stop()`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="blackboard-sync", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("a sync Blackboard call cannot be made from its own loop")
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


def _is_wrapped(value: object) -> bool:
    return any(hasattr(value, name) for name in ("__anext__", "__aenter__", "__aiter__"))


class SyncProxy:
    """Runs the methods of an async object on the loop thread."""

    def __init__(self, target: Any, loop: _LoopThread) -> None:
        self._target = target
        self._loop = loop

    def _on_loop(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        async def call() -> Any:
            result = function(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result

        result = self._loop.run(call())
        if result is self._target:
            return self
        return SyncProxy(result, self._loop) if _is_wrapped(result) else result

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def method(*args: Any, **kwargs: Any) -> Any:
            return self._on_loop(attribute, *args, **kwargs)

        method.__name__ = name
        method.__doc__ = attribute.__doc__
        return method

    def __repr__(self) -> str:
        return f"<sync {self._target!r}>"

    # Iterators: async iterators (and async iterables) become iterators.
    def __iter__(self) -> Iterator[Any]:
        if hasattr(self._target, "__anext__"):
            return self
        if hasattr(self._target, "__aiter__"):
            return iter(self._on_loop(self._target.__aiter__))
        return iter(self._on_loop(lambda: list(self._target)))

    def __next__(self) -> Any:
        try:
            return self._on_loop(self._target.__anext__)
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        """Ends an async generator or subscription (`aclose`), or closes the client."""
        closer = getattr(self._target, "aclose", None) or self._target.close
        self._on_loop(closer)

    # Context managers.
    def __enter__(self) -> Any:
        return self._on_loop(self._target.__aenter__)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return bool(self._on_loop(self._target.__aexit__, exc_type, exc, tb))

    # Mappings (a Mirror): read on the loop thread, where the view changes.
    def __getitem__(self, key: Any) -> Any:
        return self._on_loop(self._target.__getitem__, key)

    def __len__(self) -> int:
        if not hasattr(self._target, "__len__"):
            # list() asks for a length hint first: TypeError tells it there is none.
            raise TypeError(f"{type(self._target).__name__} has no length")
        return int(self._on_loop(self._target.__len__))

    def __contains__(self, key: Any) -> bool:
        return bool(self._on_loop(self._target.__contains__, key))


class SyncClient(SyncProxy):
    """A `Client` for sync code. Close it (or use `with`) to stop its thread."""

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._loop.stop()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        self.close()
        return False


def connect(target: str | Sequence[str], **options: Any) -> SyncClient:
    """Like `blackboard_client.connect`, for code without an event loop."""
    loop = _LoopThread()

    async def open_client() -> Any:
        return _connect_async(target, **options)

    try:
        client = loop.run(open_client())
    except BaseException:
        loop.stop()
        raise
    return SyncClient(client, loop)
