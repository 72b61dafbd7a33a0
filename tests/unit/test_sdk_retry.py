"""RetryPolicy: the backoff schedule, what is retried, and request ids across attempts.

The client side runs against a tiny real grpc.aio server implementing the
generated servicer, which fails its first calls on purpose.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

import blackboard_client as bb
from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc

FAST = bb.RetryPolicy(attempts=4, initial_backoff=0.001, max_backoff=0.004, jitter=0.0)


def test_backoff_doubles_up_to_the_cap() -> None:
    policy = bb.RetryPolicy(
        attempts=6, initial_backoff=0.1, max_backoff=0.5, multiplier=2, jitter=0.0
    )
    assert [round(d, 6) for d in policy.delays()] == [0.1, 0.2, 0.4, 0.5, 0.5]


def test_attempts_count_the_first_try() -> None:
    assert list(bb.RetryPolicy(attempts=1).delays()) == []
    assert list(bb.RetryPolicy.never().delays()) == []
    assert len(list(bb.RetryPolicy(attempts=3).delays())) == 2


def test_jitter_scales_each_delay_within_its_band() -> None:
    policy = bb.RetryPolicy(attempts=3, initial_backoff=1.0, max_backoff=4.0, jitter=0.25)
    assert policy.backoff(2, rand=lambda: 0.0) == pytest.approx(1.5)
    assert policy.backoff(2, rand=lambda: 0.5) == pytest.approx(2.0)
    assert policy.backoff(2, rand=lambda: 1.0) == pytest.approx(2.5)
    for delay in policy.delays():
        assert 0.75 <= delay <= 2.5


@pytest.mark.parametrize(
    "bad",
    [
        {"attempts": 0},
        {"initial_backoff": -1.0},
        {"initial_backoff": 3.0, "max_backoff": 1.0},
        {"multiplier": 0.5},
        {"jitter": 1.5},
    ],
)
def test_nonsense_policies_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        bb.RetryPolicy(**bad)


def test_only_unavailable_and_a_bare_cancel_are_retryable() -> None:
    policy = bb.RetryPolicy()
    assert policy.retryable(bb.Unavailable("down"))
    assert policy.retryable(bb.ShuttingDown("draining"))
    assert policy.retryable(bb.BackendUnavailable("redis"))
    assert not policy.retryable(bb.ConditionFailed("version 3"))
    assert not policy.retryable(bb.DeadlineExceeded("too slow"))
    assert not policy.retryable(bb.RetriesExhausted("aborted"))
    # A draining replica cancels calls it never ran; no server answer is a CANCELLED.
    assert policy.retryable(bb.Cancelled("CANCELLED"))


def _abort_status(code: grpc.StatusCode, reason: str, **metadata: str) -> grpc.Status:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="blackboard.v1", metadata=metadata))
    status = status_pb2.Status(code=code.value[0], message=f"{reason} on purpose", details=[info])
    return rpc_status.to_status(status)


class FlakyBlackboard(pb_grpc.BlackboardServicer):
    """Fails the first `failures` calls of each RPC with `status` (None: plain UNAVAILABLE)."""

    def __init__(self) -> None:
        self.failures = 0
        self.status: grpc.Status | None = None
        self.request_ids: list[str] = []
        self.agent_ids: list[str] = []
        self.calls = 0

    async def _fail_or_pass(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.calls += 1
        metadata = dict(context.invocation_metadata() or ())
        self.agent_ids.append(str(metadata.get("x-agent-id", "")))
        if self.calls <= self.failures:
            if self.status is None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "no backend")
            await context.abort(
                self.status.code, self.status.details, self.status.trailing_metadata
            )

    async def Put(self, request: pb.PutRequest, context: Any) -> pb.WriteResult:
        self.request_ids.append(request.request_id)
        await self._fail_or_pass(context)
        return pb.WriteResult(revision=len(self.request_ids), key=request.key, version=1)

    async def Txn(self, request: pb.TxnRequest, context: Any) -> pb.TxnResponse:
        self.request_ids.append(request.request_id)
        await self._fail_or_pass(context)
        return pb.TxnResponse(succeeded=True, revision=7)

    async def Get(self, request: pb.GetRequest, context: Any) -> pb.GetResponse:
        await self._fail_or_pass(context)
        return pb.GetResponse(entry=pb.Entry(key=request.key, version=1), revision=1)


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[FlakyBlackboard, str]]:
    servicer = FlakyBlackboard()  # type: ignore[abstract]  # the stub marks every RPC abstract
    server = grpc.aio.server()
    pb_grpc.add_BlackboardServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_a_write_retried_after_unavailable_reuses_its_request_id(
    flaky: tuple[FlakyBlackboard, str],
) -> None:
    servicer, address = flaky
    servicer.failures = 2
    async with bb.connect(address, retry=FAST, agent_id="worker-1") as client:
        result = await client.put("c", "k", b"v")
    assert result.revision == 3
    assert len(servicer.request_ids) == 3
    assert len(set(servicer.request_ids)) == 1
    assert servicer.request_ids[0]
    assert servicer.agent_ids == ["worker-1"] * 3


async def test_a_given_request_id_is_sent_on_every_attempt(
    flaky: tuple[FlakyBlackboard, str],
) -> None:
    servicer, address = flaky
    servicer.failures = 1
    servicer.status = _abort_status(grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
    async with bb.connect(address, retry=FAST) as client:
        await client.txn("c", success=[bb.TxnOp.put("k", json=1)], request_id="req-42")
    assert servicer.request_ids == ["req-42", "req-42"]


async def test_each_logical_write_gets_its_own_request_id(
    flaky: tuple[FlakyBlackboard, str],
) -> None:
    servicer, address = flaky
    async with bb.connect(address, retry=FAST) as client:
        await client.put("c", "k", b"1")
        await client.put("c", "k", b"2")
    assert len(set(servicer.request_ids)) == 2


async def test_a_version_conflict_is_never_retried(flaky: tuple[FlakyBlackboard, str]) -> None:
    servicer, address = flaky
    servicer.failures = 1
    servicer.status = _abort_status(
        grpc.StatusCode.FAILED_PRECONDITION,
        "CONDITION_FAILED",
        key="k",
        current_version="4",
        current_mod_revision="9",
    )
    async with bb.connect(address, retry=FAST) as client:
        with pytest.raises(bb.ConditionFailed) as caught:
            await client.put("c", "k", b"v", expect=bb.Expect.version(3))
    assert caught.value.current_version == 4
    assert servicer.calls == 1


async def test_a_read_past_its_deadline_is_not_retried(
    flaky: tuple[FlakyBlackboard, str],
) -> None:
    servicer, address = flaky
    servicer.failures = 1
    servicer.status = _abort_status(grpc.StatusCode.DEADLINE_EXCEEDED, "")
    async with bb.connect(address, retry=FAST) as client:
        with pytest.raises(bb.DeadlineExceeded):
            await client.get("c", "k")
    assert servicer.calls == 1


async def test_a_read_is_retried_after_unavailable(flaky: tuple[FlakyBlackboard, str]) -> None:
    servicer, address = flaky
    servicer.failures = 3
    async with bb.connect(address, retry=FAST) as client:
        entry = await client.get("c", "k")
    assert entry.key == "k"
    assert servicer.calls == 4


async def test_the_last_error_is_raised_when_attempts_run_out(
    flaky: tuple[FlakyBlackboard, str],
) -> None:
    servicer, address = flaky
    servicer.failures = 100
    servicer.status = _abort_status(grpc.StatusCode.UNAVAILABLE, "BACKEND_UNAVAILABLE")
    async with bb.connect(address, retry=FAST) as client:
        with pytest.raises(bb.BackendUnavailable):
            await client.put("c", "k", b"v")
    assert servicer.calls == FAST.attempts
    assert len(set(servicer.request_ids)) == 1


async def test_a_server_that_is_not_there_is_unavailable() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nobody listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with bb.connect(f"127.0.0.1:{port}", retry=FAST, timeout=5) as client:
        with pytest.raises(bb.Unavailable):
            await client.get("c", "k")
