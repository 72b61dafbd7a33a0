"""The SDK writer when gRPC reports INTERNAL for a stream the server ended.

A message sent as the server ends a Write stream fails in gRPC's core, and the
client's call then reports INTERNAL ("Internal error from Core") in place of
the server's status. The streams here are stand-ins for grpc.aio's stream call
(no server): the first breaks that way mid-send, the second answers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from blackboard.v1 import blackboard_pb2 as pb
from blackboard_client import RetryPolicy
from blackboard_client._errors import InternalError
from blackboard_client._writer import Writer

RETRY = RetryPolicy(attempts=3, initial_backoff=0.001, max_backoff=0.001, jitter=0)


def _internal() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details="Internal error from Core",
    )


class _Stream:
    """`breaks`: the first write fails and the call ends INTERNAL; else every
    write is answered with its writes' results."""

    def __init__(self, breaks: bool, write_blocks: bool = False) -> None:
        self.breaks = breaks
        self.write_blocks = write_blocks
        self.sent: list[pb.WriteStreamRequest] = []
        self._replies: asyncio.Queue[Any] = asyncio.Queue()

    async def write(self, request: pb.WriteStreamRequest) -> None:
        self.sent.append(request)
        if self.breaks:
            self._replies.put_nowait(_internal())
            if self.write_blocks:  # the reader sees the status before the send returns
                await asyncio.Event().wait()
            raise _internal()
        outcomes = [
            pb.WriteOutcome(sequence=w.sequence, result=pb.WriteResult(revision=w.sequence))
            for w in request.writes
        ]
        self._replies.put_nowait(pb.WriteStreamResponse(outcomes=outcomes))

    async def read(self) -> Any:
        reply = await self._replies.get()
        if isinstance(reply, grpc.aio.AioRpcError):
            raise reply
        return reply

    def cancel(self) -> bool:
        return True


@pytest.mark.parametrize("write_blocks", [False, True])
async def test_writes_sent_as_the_stream_broke_internal_are_sent_again(write_blocks: bool) -> None:
    streams = [_Stream(breaks=True, write_blocks=write_blocks), _Stream(breaks=False)]
    opened: list[_Stream] = []

    def open_stream(metadata: Any) -> _Stream:
        opened.append(streams[len(opened)])
        return opened[-1]

    async with Writer(open_stream, (), RETRY, timeout=5) as writer:
        result = await writer.put("c", "k", "v")
    assert result.revision == 1
    assert len(opened) == 2
    # The same write, with the same request id, on both streams: applied once.
    first, second = (s.sent[0].writes[0] for s in streams)
    assert first.put.request_id and first.put.request_id == second.put.request_id


async def test_internal_with_no_message_on_its_way_is_not_retried() -> None:
    class _Ends(_Stream):
        async def write(self, request: pb.WriteStreamRequest) -> None:
            self.sent.append(request)
            self._replies.put_nowait(_internal())  # answered by the status, sent fine

    opened: list[_Stream] = []

    def open_stream(metadata: Any) -> _Stream:
        opened.append(_Ends(breaks=False))
        return opened[-1]

    async with Writer(open_stream, (), RETRY, timeout=5) as writer:
        with pytest.raises(InternalError):
            await writer.put("c", "k", "v")
    assert len(opened) == 1
