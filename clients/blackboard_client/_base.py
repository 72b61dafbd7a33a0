"""What every part of the client shares: the channel, the stubs, and `_call`.

`Client` is `BaseClient` plus the coordination methods (`_coordination.py`)
plus the blackboard methods (`_client.py`), so each module stays small.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from blackboard_client._errors import error_from_rpc
from blackboard_client._retry import RetryPolicy

R = TypeVar("R")

AGENT_ID_HEADER = "x-agent-id"
AUTHORIZATION_HEADER = "authorization"


class BaseClient:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        timeout: float | None,
        retry: RetryPolicy,
        metadata: Mapping[str, str],
    ) -> None:
        self._channel = channel
        self._stub = pb_grpc.BlackboardStub(channel)
        self._coordination = pb_grpc.CoordinationStub(channel)
        self._timeout = timeout
        self.retry = retry
        self._metadata = tuple(metadata.items())
        #: The agent id this client sends ("" when it sends none).
        self.agent_id = dict(metadata).get(AGENT_ID_HEADER, "")

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(
        self, method: Callable[..., Awaitable[R]], request: Any, *, extra_time: float = 0.0
    ) -> R:
        """One unary call with the client's retry policy.

        `extra_time` lengthens the deadline of each attempt, for calls that may
        wait on the server by design (a lock or campaign wait).
        """
        timeout = None if self._timeout is None else self._timeout + extra_time

        async def attempt() -> R:
            try:
                return await method(request, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                raise error_from_rpc(error) from error

        return await self.retry.run(attempt)
