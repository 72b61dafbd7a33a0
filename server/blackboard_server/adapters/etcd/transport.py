"""Endpoints, channels and the one retry loop of the etcd client.

One gRPC channel per endpoint, all opened up front; calls go to the current
endpoint and move on to the next one when it answers UNAVAILABLE (dead, or
without a Raft leader). gRPC reconnects each channel on its own, so a member
that comes back is usable again without any bookkeeping here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from grpc import aio

from blackboard.etcd import election_pb2_grpc, lock_pb2_grpc, rpc_pb2_grpc
from blackboard_server.adapters.etcd.errors import (
    EtcdDeadline,
    EtcdError,
    EtcdUnavailable,
    from_rpc_error,
)

# Asks the member to refuse the call (UNAVAILABLE) when it has no Raft leader,
# instead of letting it wait out etcd's own request timeout; on streams, etcd
# ends the stream when the member loses its leader.
REQUIRE_LEADER = (("hasleader", "true"),)

_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # etcd's default --grpc-keepalive-min-time is 5 s; ping no more often than that.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.max_receive_message_length", 2**31 - 1),
)

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff between rounds over all endpoints, for calls that are safe to repeat."""

    initial_backoff_s: float = 0.025
    max_backoff_s: float = 0.5
    multiplier: float = 2.0

    def backoff(self, round_: int) -> float:
        return float(min(self.max_backoff_s, self.initial_backoff_s * self.multiplier**round_))


def parse_endpoint(endpoint: str) -> str:
    if endpoint.startswith("https://"):
        raise ValueError(f"TLS etcd endpoints are not supported yet: {endpoint}")
    return endpoint.removeprefix("http://").rstrip("/")


class Member:
    """One endpoint: its channel and the typed stubs over it."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.channel = aio.insecure_channel(endpoint, options=_CHANNEL_OPTIONS)
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.watch = rpc_pb2_grpc.WatchStub(self.channel)
        self.lease = rpc_pb2_grpc.LeaseStub(self.channel)
        self.lock = lock_pb2_grpc.LockStub(self.channel)
        self.election = election_pb2_grpc.ElectionStub(self.channel)


class Transport:
    def __init__(self, endpoints: Sequence[str], retry: RetryPolicy) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self._members = [Member(parse_endpoint(e)) for e in endpoints]
        self._index = 0
        self.retry = retry

    @property
    def size(self) -> int:
        return len(self._members)

    def current(self) -> tuple[int, Member]:
        return self._index, self._members[self._index]

    def failed(self, index: int) -> None:
        """The member at `index` could not serve a call: later calls go to the next.

        Only moves on if no other call moved already, so a burst of failures
        from one dead member advances by one, not by the burst's size.
        """
        if index == self._index:
            self._index = (index + 1) % len(self._members)

    def pause(self, attempt: int) -> float:
        """How long to wait before attempt `attempt + 1`: nothing while there are
        untried members in this round, a backoff after each full round."""
        if (attempt + 1) % len(self._members):
            return 0.0
        return self.retry.backoff(attempt // len(self._members))

    async def unary(
        self,
        pick: Callable[[Member], aio.UnaryUnaryMultiCallable[_Req, _Resp]],
        request: _Req,
        *,
        timeout_s: float,
        idempotent: bool,
    ) -> _Resp:
        """One call with a deadline of `timeout_s` in total, retries included.

        Only `idempotent` calls are repeated (on the next member) after
        UNAVAILABLE; others raise EtcdUnavailable at once, since etcd may have
        applied them before the connection broke.
        """
        deadline = time.monotonic() + timeout_s
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EtcdDeadline(f"etcd call exceeded its deadline of {timeout_s}s")
            index, member = self.current()
            try:
                return await pick(member)(request, timeout=remaining, metadata=REQUIRE_LEADER)
            except aio.AioRpcError as exc:
                error: EtcdError = from_rpc_error(exc)
                cause = exc
            if not isinstance(error, EtcdUnavailable):
                raise error from cause
            self.failed(index)
            pause = self.pause(attempt)
            attempt += 1
            if not idempotent or time.monotonic() + pause >= deadline:
                raise error from cause
            await asyncio.sleep(pause)

    async def close(self) -> None:
        for member in self._members:
            await member.channel.close()
