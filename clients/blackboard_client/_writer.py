"""The auto-batching writer: many writes in flight over one Write stream.

Each `put`, `delete` or `append` gets a sequence number and waits for its own
outcome; one task sends whatever writes are waiting as one stream message (up
to `max_batch`), so the writes issued while a message is on its way share the
next one. The result of each write is what the unary call would have
returned, and a failed write raises what the unary call would have raised.

Retries follow the client's `RetryPolicy`, per write: a write answered
`Unavailable`, or in flight when the stream broke with a retryable status, is
sent again (on a new stream if need be) after the policy's backoff, until its
attempts run out. So is one in flight when the stream broke with INTERNAL while
a message was being sent: gRPC reports that status, in place of the server's,
when a message goes out as the server ends the stream. Every write carries a
request id, so a write sent twice is applied once. The client's `timeout`
bounds each write from its call to its outcome, retries included; a write that
ran out of time may still apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import grpc
from google.rpc import status_pb2

from blackboard.v1 import blackboard_pb2 as pb
from blackboard_client import _convert, _requests
from blackboard_client._errors import (
    BlackboardError,
    DeadlineExceeded,
    InternalError,
    error_from_rpc,
    error_from_status,
)
from blackboard_client._model import UNSET, Expect, Fence, SupportsFence, Value, WriteResult
from blackboard_client._retry import RetryPolicy
from blackboard_client._session import Session


@dataclass(slots=True)
class _Write:
    message: pb.StreamedWrite
    future: asyncio.Future[WriteResult]
    attempts: int = 1
    timer: asyncio.TimerHandle | None = field(default=None)


class Writer:
    """Made by `Client.writer()`; used as `async with client.writer() as w:`.

    Safe to share between tasks of one event loop. Leaving the block waits for
    the writes still in flight.
    """

    def __init__(
        self,
        open_stream: Callable[..., Any],
        metadata: tuple[tuple[str, str], ...],
        retry: RetryPolicy,
        timeout: float | None,
        max_batch: int = 256,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._open = open_stream
        self._metadata = metadata
        self._retry = retry
        self._timeout = timeout
        self._max_batch = max_batch
        self._pending: dict[int, _Write] = {}
        self._unsent: deque[int] = deque()
        self._sequence = itertools.count(1)
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        # A message was on its way, or failed to go, on the current stream.
        self._sending = False

    # --- lifetime -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._runner = asyncio.create_task(self._run(), name="blackboard-writer")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Waits for the writes in flight (each ends by its outcome or its timeout), then
        closes the stream."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        waiting = [w.future for w in self._pending.values()]
        if waiting:
            await asyncio.gather(*waiting, return_exceptions=True)
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner

    # --- writes -------------------------------------------------------------------

    async def put(
        self,
        conversation_id: str,
        key: str,
        value: bytes | str | Value | None = None,
        *,
        json: Any = UNSET,
        content_type: str | None = None,
        expect: Expect | None = None,
        ttl_ms: int = 0,
        session: Session | str | None = None,
        request_id: str | None = None,
        fence: Fence | SupportsFence | None = None,
    ) -> WriteResult:
        """As `Client.put`."""
        request = _requests.put(
            conversation_id,
            key,
            value,
            json,
            content_type,
            expect,
            ttl_ms,
            session,
            request_id,
            fence,
        )
        return await self._submit(pb.StreamedWrite(put=request))

    async def delete(
        self,
        conversation_id: str,
        key: str,
        *,
        expect: Expect | None = None,
        request_id: str | None = None,
        fence: Fence | SupportsFence | None = None,
    ) -> WriteResult:
        """As `Client.delete`."""
        request = _requests.delete(conversation_id, key, expect, request_id, fence)
        return await self._submit(pb.StreamedWrite(delete=request))

    async def append(
        self,
        conversation_id: str,
        key: str,
        value: bytes | str | Value | None = None,
        *,
        json: Any = UNSET,
        content_type: str | None = None,
        ttl_ms: int = 0,
        request_id: str | None = None,
        fence: Fence | SupportsFence | None = None,
    ) -> WriteResult:
        """As `Client.append`."""
        request = _requests.append(
            conversation_id, key, value, json, content_type, ttl_ms, request_id, fence
        )
        return await self._submit(pb.StreamedWrite(append=request))

    async def _submit(self, message: pb.StreamedWrite) -> WriteResult:
        if self._runner is None:
            raise RuntimeError("the writer is not open: use it as `async with client.writer()`")
        loop = asyncio.get_running_loop()
        sequence = message.sequence = next(self._sequence)
        write = _Write(message, loop.create_future())
        if self._timeout is not None:
            write.timer = loop.call_later(self._timeout, self._expire, sequence)
        self._pending[sequence] = write
        self._send_later(sequence)
        return await write.future

    # --- outcomes -----------------------------------------------------------------

    def _resolve(self, outcome: pb.WriteOutcome) -> None:
        write = self._pending.get(outcome.sequence)
        if write is None:
            return  # timed out, or already answered on an earlier stream
        if outcome.WhichOneof("outcome") == "result":
            self._finish(outcome.sequence, write).set_result(_convert.write_result(outcome.result))
            return
        error = _error(outcome.error)
        if self._retry.retryable(error) and write.attempts < self._retry.attempts:
            write.attempts += 1
            delay = self._retry.backoff(write.attempts - 1)
            asyncio.get_running_loop().call_later(delay, self._send_later, outcome.sequence)
            return
        self._finish(outcome.sequence, write).set_exception(error)

    def _expire(self, sequence: int) -> None:
        write = self._pending.get(sequence)
        if write is not None:
            message = f"the write had no outcome within {self._timeout} s"
            self._finish(sequence, write).set_exception(DeadlineExceeded(message))

    def _finish(self, sequence: int, write: _Write) -> asyncio.Future[WriteResult]:
        del self._pending[sequence]
        if write.timer is not None:
            write.timer.cancel()
        return write.future

    def _send_later(self, sequence: int) -> None:
        if sequence in self._pending:
            self._unsent.append(sequence)
            self._wake.set()

    def _fail_all(self, error: BlackboardError, *, retryable: bool) -> None:
        """The stream broke: writes with attempts left are sent again, the rest fail."""
        for sequence, write in list(self._pending.items()):
            if retryable and write.attempts < self._retry.attempts:
                write.attempts += 1
            else:
                self._finish(sequence, write).set_exception(error)
        self._unsent = deque(sorted(self._pending))

    # --- the stream ---------------------------------------------------------------

    async def _run(self) -> None:
        breaks = 0
        while True:
            while not self._unsent:
                self._wake.clear()
                await self._wake.wait()
            call = self._open(metadata=self._metadata)
            self._sending = False
            sender = asyncio.create_task(self._send(call))
            try:
                async for response in _responses(call):
                    breaks = 0
                    for outcome in response.outcomes:
                        self._resolve(outcome)
                error: BlackboardError | None = None  # ended by the server: send again
            except grpc.RpcError as rpc_error:
                error = error_from_rpc(rpc_error)
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, grpc.RpcError):
                    await sender
                call.cancel()
            if error is None:
                self._unsent = deque(sorted(self._pending))
                continue
            # A write sent as the server ends the stream fails in gRPC's core, and the
            # call then reports INTERNAL in place of the server's status: the stream
            # broke, no more is known, and every write carries its request id.
            lost = self._sending and isinstance(error, InternalError)
            retryable = lost or self._retry.retryable(error)
            self._fail_all(error, retryable=retryable)
            if retryable:
                breaks += 1
                await asyncio.sleep(self._retry.backoff(breaks))

    async def _send(self, call: Any) -> None:
        while True:
            while not self._unsent:
                self._wake.clear()
                await self._wake.wait()
            batch: list[pb.StreamedWrite] = []
            while self._unsent and len(batch) < self._max_batch:
                write = self._pending.get(self._unsent.popleft())
                if write is not None:
                    batch.append(write.message)
            if not batch:
                continue
            self._sending = True
            try:
                await call.write(pb.WriteStreamRequest(writes=batch))
            except (grpc.RpcError, asyncio.InvalidStateError):
                return  # the stream ended: the reader sees why; unanswered writes go again
            self._sending = False


async def _responses(call: Any) -> AsyncIterator[pb.WriteStreamResponse]:
    while True:
        response = await call.read()
        if response is grpc.aio.EOF:
            return
        yield response


def _error(failed: pb.WriteError) -> BlackboardError:
    if failed.status:
        return error_from_status(status_pb2.Status.FromString(failed.status))
    status = status_pb2.Status(code=failed.code, message=failed.message)
    return error_from_status(status)
