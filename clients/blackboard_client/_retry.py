"""Retries as a value: how many attempts, how long to wait between them.

Only `Unavailable` is retried, and a bare `Cancelled`: the server never sends
CANCELLED as an answer, but a replica that starts draining cancels the calls
that reached it before it could refuse them, so such a call did not run and
another replica can take it. A version conflict, a bad argument or a deadline
that ran out is an answer, not a transient failure, and is raised at once.
Writes are safe to retry because the client sends the same request id on every
attempt: the server applies the write once and replays its result.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from blackboard_client._errors import BlackboardError, Cancelled, Unavailable

T = TypeVar("T")


def transient(error: BlackboardError) -> bool:
    """Whether `error` says nothing about the call, only that it did not get through."""
    return isinstance(error, Unavailable) or type(error) is Cancelled


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter.

    `attempts` counts the first try: 1 means never retry. The n-th retry waits
    `min(max_backoff, initial_backoff * multiplier**(n-1))`, scaled by a random
    factor in `[1 - jitter, 1 + jitter]`.
    """

    attempts: int = 5
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ValueError("need 0 <= initial_backoff <= max_backoff")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")

    @classmethod
    def never(cls) -> RetryPolicy:
        return cls(attempts=1)

    def backoff(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return base * (1 + self.jitter * (2 * rand() - 1))

    def delays(self, rand: Callable[[], float] = random.random) -> Iterator[float]:
        """The waits between attempts: `attempts - 1` of them."""
        for retry in range(1, self.attempts):
            yield self.backoff(retry, rand)

    def retryable(self, error: BlackboardError) -> bool:
        return transient(error)

    async def run(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Awaits `attempt()` until it succeeds, fails for good, or attempts run out."""
        delays = self.delays()
        while True:
            try:
                return await attempt()
            except BlackboardError as error:
                if not self.retryable(error):
                    raise
                delay = next(delays, None)
                if delay is None:
                    raise
            await asyncio.sleep(delay)
