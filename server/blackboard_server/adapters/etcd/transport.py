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

import grpc
import structlog
from grpc import aio

from blackboard.etcd import election_pb2_grpc, lock_pb2_grpc, rpc_pb2, rpc_pb2_grpc
from blackboard_server.adapters.etcd.errors import (
    EtcdDeadline,
    EtcdError,
    EtcdTokenRejected,
    EtcdUnavailable,
    from_rpc_error,
)
from blackboard_server.adapters.etcd.security import NO_SECURITY, EtcdSecurity

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

log = structlog.get_logger("blackboard.etcd")
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


def parse_endpoint(endpoint: str, *, tls: bool = False) -> str:
    if endpoint.startswith("https://") and not tls:
        raise ValueError(f"{endpoint} is a TLS endpoint: set the etcd TLS settings")
    if endpoint.startswith("http://") and tls:
        raise ValueError(f"{endpoint} is a plaintext endpoint, but etcd TLS is configured")
    return endpoint.removeprefix("http://").removeprefix("https://").rstrip("/")


class Member:
    """One endpoint: its channel and the typed stubs over it."""

    def __init__(self, endpoint: str, credentials: grpc.ChannelCredentials | None = None) -> None:
        self.endpoint = endpoint
        if credentials is None:
            self.channel = aio.insecure_channel(endpoint, options=_CHANNEL_OPTIONS)
        else:
            self.channel = aio.secure_channel(endpoint, credentials, options=_CHANNEL_OPTIONS)
        self.auth = rpc_pb2_grpc.AuthStub(self.channel)
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.watch = rpc_pb2_grpc.WatchStub(self.channel)
        self.lease = rpc_pb2_grpc.LeaseStub(self.channel)
        self.lock = lock_pb2_grpc.LockStub(self.channel)
        self.election = election_pb2_grpc.ElectionStub(self.channel)


class Transport:
    def __init__(
        self, endpoints: Sequence[str], retry: RetryPolicy, security: EtcdSecurity = NO_SECURITY
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        credentials = security.channel_credentials()
        self._members = [
            Member(parse_endpoint(e, tls=security.tls), credentials) for e in endpoints
        ]
        self._index = 0
        self.retry = retry
        self._security = security
        self._token = ""
        self._rejected = ""  # the last token a stream saw rejected
        self._auth_lock: asyncio.Lock | None = None

    def token_rejected(self) -> None:
        self._rejected = self._token

    def rejected(self) -> str | None:
        return self._rejected or None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """What every call sends: the leader requirement, and the auth token if there is one."""
        if self._token:
            return (*REQUIRE_LEADER, ("token", self._token))
        return REQUIRE_LEADER

    async def authorize(self, *, rejected: str | None = None, timeout_s: float = 5.0) -> None:
        """Gets a token if the client has a user and no token, or a new one if etcd
        rejected `rejected`. Calls racing here authenticate once."""
        if not self._security.username or (self._token and self._token != rejected):
            return
        if self._auth_lock is None:
            self._auth_lock = asyncio.Lock()
        async with self._auth_lock:
            if self._token and self._token != rejected:
                return  # another call got a fresh one meanwhile
            request = rpc_pb2.AuthenticateRequest(
                name=self._security.username, password=self._security.password
            )
            try:
                response = await self.unary(
                    lambda m: m.auth.Authenticate,
                    request,
                    timeout_s=timeout_s,
                    idempotent=True,
                    authorized=False,
                )
            except EtcdError as exc:
                if "authentication is not enabled" not in str(exc):
                    raise
                log.warning("etcd has authentication off; the etcd user is not used")
                self._security = EtcdSecurity(tls=self._security.tls)
                return
            self._token = response.token

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
        authorized: bool = True,
    ) -> _Resp:
        """One call with a deadline of `timeout_s` in total, retries included.

        Only `idempotent` calls are repeated (on the next member) after
        UNAVAILABLE; others raise EtcdUnavailable at once, since etcd may have
        applied them before the connection broke.
        """
        deadline = time.monotonic() + timeout_s
        attempt = 0
        renewed = False
        last = ""  # why the previous attempt failed, for the deadline's message
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EtcdDeadline(f"etcd call exceeded its deadline of {timeout_s}s{last}")
            if authorized:
                await self.authorize(timeout_s=remaining)
            index, member = self.current()
            token = self._token
            metadata = self.metadata() if authorized else REQUIRE_LEADER
            try:
                return await pick(member)(request, timeout=remaining, metadata=metadata)
            except aio.AioRpcError as exc:
                error: EtcdError = from_rpc_error(exc)
                cause = exc
            if isinstance(error, EtcdTokenRejected) and authorized and not renewed:
                # A rejected token means etcd did nothing: safe to repeat with a new one.
                renewed = True
                await self.authorize(
                    rejected=token, timeout_s=max(deadline - time.monotonic(), 0.1)
                )
                continue
            if not isinstance(error, EtcdUnavailable):
                raise error from cause
            last = f" (last: {error})"
            self.failed(index)
            pause = self.pause(attempt)
            attempt += 1
            if not idempotent or time.monotonic() + pause >= deadline:
                raise error from cause
            await asyncio.sleep(pause)

    async def close(self) -> None:
        for member in self._members:
            await member.channel.close()
