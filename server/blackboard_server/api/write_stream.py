"""The Write stream: many writes per call and per message, each with its own outcome.

Per-call cost, not storage, limits a unary write; here one stream carries any
number of writes. The writes of a message run concurrently (their commits share
the store's pipelined connection), messages are taken while earlier ones are
still being written, and each message is answered with one message holding
its writes' outcomes. At most `max_stream_in_flight` writes of a stream are in
flight: past that the stream is not read until outcomes have gone out, so a
fast client is slowed by HTTP/2 flow control, not refused.

A write's failure is its outcome (the google.rpc.Status its unary call would
have ended with), never the stream's end. With authentication on, the stream
is admitted for any verified identity and each write is authorized for its own
conversation with the role `REQUIREMENTS` gives the method.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from blackboard.v1 import blackboard_pb2 as pb
from blackboard_server.api import writes
from blackboard_server.api.auth import IDENTITY
from blackboard_server.api.errors import status_message
from blackboard_server.api.handlers import Malformed
from blackboard_server.api.outcomes import TALLY, Outcome
from blackboard_server.domain.auth import REQUIREMENTS
from blackboard_server.domain.errors import (
    BlackboardError,
    InvalidArgument,
    LimitExceeded,
    ShuttingDown,
)
from blackboard_server.domain.limits import Limits
from blackboard_server.services.access import Access
from blackboard_server.services.blackboard import BlackboardService, Caller

Context = grpc.aio.ServicerContext[Any, Any]
METHOD = "/blackboard.v1.Blackboard/Write"
_KINDS: dict[str, Callable[[BlackboardService, Caller, Any], Awaitable[pb.WriteResult]]] = {
    "put": writes.put,
    "delete": writes.delete,
    "append": writes.append,
}


class WriteStream:
    """One Write call: reads messages, writes, answers; counts for the access line."""

    def __init__(
        self,
        bb: BlackboardService,
        access: Access | None,
        who: Caller,
        limits: Limits,
        outcomes: dict[str, Outcome],
        context: Context,
        admit: Callable[[str], None] = lambda tenant: None,
    ) -> None:
        self._bb = bb
        self._access = access  # None: no authentication, nothing to authorize
        self._who = who
        self._limits = limits
        self._outcomes = outcomes
        self._context = context
        self._admit = admit  # the tenant's request rate: each write counts as a request
        self._sending = asyncio.Lock()  # one message at a time on the wire
        self._slots = asyncio.Semaphore(limits.max_stream_in_flight)
        self.tally = {"messages": 0, "writes": 0, "failed": 0}

    async def serve(
        self, requests: AsyncIterator[pb.WriteStreamRequest], closing: asyncio.Event
    ) -> None:
        """Until the client closes its side. When the server shuts down (`closing`), it
        stops reading, answers the writes in flight, and ends the stream with
        UNAVAILABLE `SHUTTING_DOWN`: the client sends whatever it has not had an
        answer for again, elsewhere or later."""
        TALLY.set(self.tally)
        try:
            async with asyncio.TaskGroup() as group:
                reading = group.create_task(self._read(requests, group))
                stopping = group.create_task(closing.wait())
                await asyncio.wait((reading, stopping), return_when=asyncio.FIRST_COMPLETED)
                (stopping if reading.done() else reading).cancel()
        except ExceptionGroup as failed:
            # A malformed message ends the stream with its status, not as a bug.
            known = [x for x in failed.exceptions if isinstance(x, BlackboardError)]
            if known:
                raise known[0] from None
            raise
        if reading.cancelled():
            raise ShuttingDown()

    async def _read(
        self, requests: AsyncIterator[pb.WriteStreamRequest], group: asyncio.TaskGroup
    ) -> None:
        async for message in requests:
            if isinstance(message, Malformed):
                # The writes it carried cannot be told apart: the stream ends.
                raise InvalidArgument("request", "is not a valid request message")
            count = min(len(message.writes), self._limits.max_stream_message_writes)
            for _ in range(count):
                await self._slots.acquire()
            group.create_task(self._answer(message, count))

    async def _answer(self, message: pb.WriteStreamRequest, slots: int) -> None:
        try:
            if len(message.writes) > self._limits.max_stream_message_writes:
                error = LimitExceeded(
                    "writes per message",
                    len(message.writes),
                    self._limits.max_stream_message_writes,
                )
                outcomes = [self._failed(w.sequence, error) for w in message.writes]
            elif len(message.writes) == 1:
                outcomes = [await self._write(message.writes[0])]  # no task for a lone write
            else:
                outcomes = await asyncio.gather(*(self._write(w) for w in message.writes))
            self.tally["messages"] += 1
            self.tally["writes"] += len(outcomes)
            async with self._sending:
                await self._context.write(pb.WriteStreamResponse(outcomes=outcomes))
        finally:
            for _ in range(slots):
                self._slots.release()

    async def _write(self, write: pb.StreamedWrite) -> pb.WriteOutcome:
        kind = write.WhichOneof("op")
        try:
            if kind is None:
                raise InvalidArgument("op", "each write must be a put, delete or append")
            request = getattr(write, kind)
            self._admit(self._who.tenant)
            if self._access is not None:
                await self._access.authorize(_identity(), _NEED, request.conversation_id)
            result = await _KINDS[kind](self._bb, self._who, request)
        except BlackboardError as error:
            if kind is not None:
                self._outcomes[kind](None, error.reason)
            return self._failed(write.sequence, error)
        self._outcomes[kind](result, "")
        return pb.WriteOutcome(sequence=write.sequence, result=result)

    def _failed(self, sequence: int, error: BlackboardError) -> pb.WriteOutcome:
        self.tally["failed"] += 1
        status = status_message(error)
        return pb.WriteOutcome(
            sequence=sequence,
            error=pb.WriteError(
                code=status.code, message=status.message, status=status.SerializeToString()
            ),
        )


_NEED = REQUIREMENTS[METHOD]


def _identity() -> Any:
    who = IDENTITY.get()
    assert who is not None  # the auth gate admits no call without one
    return who
