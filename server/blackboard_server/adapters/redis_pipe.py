"""One pipelined Redis connection for script calls: the store's write path.

Through redis-py every command takes a pooled connection, sends, waits for its
reply and gives the connection back. Here a call writes its encoded EVALSHA to
one shared connection and waits on a future; Redis answers in order, so
replies are matched to calls first in, first out. Concurrent calls share the
connection, and their sends and replies coalesce into few syscalls.

What a caller can rely on, as with redis-py under RedisStore's guard:

- every call ends within `timeout_s` of its start. A reply that is overdue
  drops the connection (without it no later reply can be matched), and every
  call still waiting on it fails with BackendUnavailable; so does every call
  waiting when the connection is lost. The next call connects again.
- NOSCRIPT (Redis restarted, or its scripts were flushed) loads the script
  and sends the call again: NOSCRIPT means the script did not run. Nothing
  else is ever sent twice.
- an error reply raises redis-py's ResponseError (ReadOnlyError for READONLY)
  carrying Redis's whole message, its first word as `status_code`.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
from redis.asyncio import ConnectionPool
from redis.asyncio.connection import SSLConnection
from redis.exceptions import NoScriptError, ReadOnlyError, ResponseError

from blackboard_server.domain.errors import BackendUnavailable

Arg = bytes | str | int
CLIENT_NAME = "blackboard-pipe"
# Timers may fire up to a millisecond early (uvloop keeps time in milliseconds).
_TIMER_SLACK_S = 0.001


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: bytes
    sha: bytes

    @classmethod
    def of(cls, name: str, source: str) -> Script:
        raw = source.encode()
        return cls(name, raw, hashlib.sha1(raw).hexdigest().encode())


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect: what redis-py parsed from the store's URL."""

    host: str = "localhost"
    port: int = 6379
    path: str = ""  # a unix socket, instead of host and port
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: ssl.SSLContext | None = None

    @classmethod
    def of(cls, pool: ConnectionPool) -> Endpoint:
        kw = pool.connection_kwargs
        tls = None
        if issubclass(pool.connection_class, SSLConnection):
            tls = pool.make_connection().ssl_context.get()  # type: ignore[no-untyped-call]
        return cls(
            host=kw.get("host", "localhost"),
            port=int(kw.get("port", 6379)),
            path=kw.get("path", ""),
            db=int(kw.get("db", 0)),
            username=kw.get("username"),
            password=kw.get("password"),
            tls=tls,
        )

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        return cls.of(ConnectionPool.from_url(url))

    def handshake(self) -> list[tuple[Arg, ...]]:
        commands: list[tuple[Arg, ...]] = []
        if self.password is not None:
            user = (self.username,) if self.username else ()
            commands.append(("AUTH", *user, self.password))
        if self.db:
            commands.append(("SELECT", self.db))
        commands.append(("CLIENT", "SETNAME", CLIENT_NAME))  # how CLIENT LIST shows it
        return commands


class ScriptPipe:
    """Script calls over one connection, opened on first use and after a loss.

    With `replicas` > 0 a call returns only once that many replicas confirm
    its effects (WAIT, one for every call whose reply came in the same loop
    iteration). A call they do not confirm within `wait_timeout_ms` raises
    BackendUnavailable with outcome "unknown": it ran on the primary, and may
    or may not survive a failover.

    A `read` is a script that wrote only to confirm what it read (see
    RedisStore's confirmed reads): unconfirmed, it raises BackendUnavailable
    without an outcome, its reply unseen.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        timeout_s: float,
        replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        self._endpoint = endpoint
        self._timeout_s = timeout_s
        self._replicas = replicas
        self._wait_timeout_ms = wait_timeout_ms
        self._conn: _Connection | None = None
        self._connecting = asyncio.Lock()
        self._closed = False

    @property
    def waits(self) -> bool:
        """Whether calls wait for replicas."""
        return self._replicas > 0

    async def evalsha(
        self,
        script: Script,
        keys: Sequence[str],
        *args: Arg,
        asking: bool = False,
        read: bool = False,
    ) -> Any:
        """`asking`: send ASKING first, as a cluster's ASK redirection requires."""
        conn = self._conn
        if conn is None or conn.lost:
            deadline = asyncio.get_running_loop().time() + self._timeout_s
            conn = await self._connect(deadline)
        else:
            deadline = conn.loop.time() + self._timeout_s
        command = _pack((b"EVALSHA", script.sha, len(keys), *keys, *args))
        try:
            reply = await (
                _asking(conn, command, deadline) if asking else conn.send(command, deadline)
            )
        except NoScriptError:
            await conn.send(_pack((b"SCRIPT", b"LOAD", script.source)), deadline)
            reply = await (
                _asking(conn, command, deadline) if asking else conn.send(command, deadline)
            )
        if self._replicas:
            await self._replicated(conn, deadline, read)
        return reply

    async def _replicated(self, conn: _Connection, deadline: float, read: bool) -> None:
        wanted, timeout_ms = self._replicas, self._wait_timeout_ms
        what = "the read" if read else "the write"
        try:
            confirmed = await conn.wait_replicas(wanted, timeout_ms, deadline)
        except BackendUnavailable as exc:
            detail = f"the connection was lost before replicas confirmed {what}"
            raise BackendUnavailable("redis", detail, outcome_unknown=not read) from exc
        if confirmed < wanted:
            after = (
                "what it read may not survive a failover"
                if read
                else "it may or may not survive a failover"
            )
            raise BackendUnavailable(
                "redis",
                f"{what} was confirmed by {confirmed} of {wanted} replicas within "
                f"{timeout_ms} ms; {after}",
                outcome_unknown=not read,
            )

    async def __aenter__(self) -> ScriptPipe:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        if self._conn is not None:
            self._conn.drop("the store is closed")

    async def _connect(self, deadline: float) -> _Connection:
        try:
            async with asyncio.timeout_at(deadline), self._connecting:
                conn = self._conn
                if conn is not None and not conn.lost:
                    return conn  # another call connected while this one waited
                if self._closed:
                    raise BackendUnavailable("redis", "the store is closed")
                conn = await _open(self._endpoint, self._timeout_s)
                try:
                    for command in self._endpoint.handshake():
                        await conn.send(_pack(command), deadline)
                    if self._closed:
                        raise BackendUnavailable("redis", "the store is closed")
                except BaseException:
                    conn.drop("handshake failed")
                    raise
                self._conn = conn
                return conn
        except (OSError, TimeoutError, ResponseError) as exc:
            raise BackendUnavailable("redis", str(exc) or type(exc).__name__) from exc


async def _open(endpoint: Endpoint, timeout_s: float) -> _Connection:
    loop = asyncio.get_running_loop()

    def protocol() -> _Connection:
        return _Connection(loop, timeout_s)

    if endpoint.path:
        _, conn = await loop.create_unix_connection(protocol, endpoint.path)
    else:
        _, conn = await loop.create_connection(
            protocol, endpoint.host, endpoint.port, ssl=endpoint.tls
        )
    return conn


class _Connection(asyncio.Protocol):
    """One socket's life: sends coalesced per loop iteration, replies matched in order.

    `_waiting` holds one entry per call sent and not yet answered: at most the
    calls in flight, which the server's own concurrency bounds, for at most
    the timeout.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self.loop = loop
        self.lost = False
        self._timeout_s = timeout_s
        self._transport: asyncio.BaseTransport | None = None
        self._parser = hiredis.Reader(replyError=_error)
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._out: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._wait: asyncio.Future[Any] | None = None  # a WAIT queued, not yet written

    def send(self, command: bytes, deadline: float) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        if self.lost:
            future.set_exception(BackendUnavailable("redis", "connection lost"))
            return future
        if not self._out:
            self.loop.call_soon(self._flush)
        self._out.append(command)
        self._waiting.append((future, deadline))
        if deadline < self._timer_at:
            self._arm(deadline)
        return future

    def wait_replicas(self, replicas: int, timeout_ms: int, deadline: float) -> asyncio.Future[Any]:
        """WAIT for every call sent so far: one WAIT is shared until it is written.

        Redis runs a connection's commands in order, so a WAIT written after a
        call's command covers that call's writes.
        """
        if self._wait is None:
            self._wait = self.send(_pack((b"WAIT", replicas, timeout_ms)), deadline)
        return self._wait

    def drop(self, reason: str) -> None:
        """Closes the connection and fails every call waiting on it."""
        if self.lost:
            return
        self.lost = True
        self._out.clear()
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.abort()  # type: ignore[attr-defined]
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(BackendUnavailable("redis", reason))

    # --- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.drop(f"connection lost: {exc}" if exc else "connection closed by Redis")

    def data_received(self, data: bytes) -> None:
        parser, waiting = self._parser, self._waiting
        parser.feed(data)
        try:
            while (reply := parser.gets()) is not False:
                if not waiting:
                    self.drop("a reply to no call")
                    return
                future, _ = waiting.popleft()
                if future.done():
                    continue  # its caller was cancelled; the reply still had to be read
                if isinstance(reply, ResponseError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except hiredis.ProtocolError as exc:
            self.drop(f"unreadable reply: {exc}")

    def eof_received(self) -> bool:
        return False  # close; connection_lost fails whoever still waits

    # --- internals ------------------------------------------------------------

    def _flush(self) -> None:
        if self._out and self._transport is not None:
            self._transport.write(b"".join(self._out))  # type: ignore[attr-defined]
        self._out.clear()
        self._wait = None

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._check)

    def _check(self) -> None:
        """One timer for every waiting call, set for the earliest deadline."""
        self._timer, self._timer_at = None, math.inf
        if not self._waiting or self.lost:
            return
        first = min(deadline for _, deadline in self._waiting)
        if first <= self.loop.time() + _TIMER_SLACK_S:
            self.drop(f"no reply within {self._timeout_s}s")
        else:
            self._arm(first)


async def _asking(conn: _Connection, command: bytes, deadline: float) -> Any:
    """ASKING and the command, written together: ASKING holds for the next command only."""
    _, reply = await asyncio.gather(
        conn.send(_pack((b"ASKING",)), deadline), conn.send(command, deadline)
    )
    return reply


def _pack(command: tuple[Arg, ...]) -> bytes:
    """RESP, encoded by hiredis (in C)."""
    packed: bytes = hiredis.pack_command(command)  # type: ignore[arg-type]  # stub: a 1-tuple
    return packed


def _error(message: str) -> ResponseError:
    code = message.split(" ", 1)[0]
    if code == "NOSCRIPT":
        return NoScriptError(message, status_code=code)
    if code == "READONLY":
        return ReadOnlyError(message, status_code=code)
    return ResponseError(message, status_code=code)


__all__ = ["Endpoint", "Script", "ScriptPipe"]
