"""Metrics, logs and traces of a real server: /metrics scraped over HTTP after a
scripted workload, the JSON access lines of the real binary, and the spans of a Put."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from blackboard_server.app import serve
from blackboard_server.config import Settings
from blackboard_server.tracing import open_tracing
from tests.integration.conftest import error_of
from tests.integration.test_api import details, put
from tests.integration.test_stream import Recorder, new_conv, wait_until
from tests.servers import ServerProcess, free_port

BB = "blackboard.v1.Blackboard"
CO = "blackboard.v1.Coordination"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


async def scrape(port: int) -> Samples:
    text = await asyncio.to_thread(scrape_text, port)
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


class Delta:
    """What moved between two scrapes."""

    def __init__(self, before: Samples, after: Samples) -> None:
        self.before, self.after = before, after

    def __call__(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return self.after.get(key, 0.0) - self.before.get(key, 0.0)

    def rpc(self, name: str, service: str, method: str, kind: str = "unary", **more: str) -> float:
        return self(name, grpc_service=service, grpc_method=method, grpc_type=kind, **more)


async def test_metrics_move_by_exactly_the_workload(make_server: Any) -> None:
    settings = {"subscriber_max_lag": 50, "subscriber_batch": 10, "subscriber_write_timeout_s": 1}
    async with (
        make_server(metrics_port=free_port(), **settings) as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        bb, co = pb_grpc.BlackboardStub(channel), pb_grpc.CoordinationStub(channel)
        before = await scrape(running.metrics_port)
        conv = await new_conv(bb)  # CreateConversation: 1
        await put(bb, conv, "k", "v")  # Put ok
        conflict = await error_of(put(bb, conv, "k", "w", expect=pb.Expect(version=5)))
        assert details(conflict)[0].reason == "CONDITION_FAILED"
        for _ in range(2):  # ok, then replayed
            await put(bb, conv, "once", "x", request_id="r-1")
        compare = pb.Compare(
            key="k", target=pb.Compare.VERSION, operator=pb.Compare.EQUAL, number=9
        )
        txn = await bb.Txn(pb.TxnRequest(conversation_id=conv, compares=[compare]))
        assert not txn.succeeded
        # A fenced write: alice's token after bob took the lock.
        s1 = await co.OpenSession(pb.OpenSessionRequest(conversation_id=conv))
        s2 = await co.OpenSession(pb.OpenSessionRequest(conversation_id=conv))
        lock = await co.AcquireLock(
            pb.AcquireLockRequest(conversation_id=conv, name="job", session_id=s1.session_id)
        )
        await co.ReleaseLock(
            pb.ReleaseLockRequest(
                conversation_id=conv, name="job", session_id=s1.session_id, token=lock.token
            )
        )
        await co.AcquireLock(
            pb.AcquireLockRequest(conversation_id=conv, name="job", session_id=s2.session_id)
        )
        stale = pb.Fence(lock="job", token=lock.token)
        assert details(await error_of(put(bb, conv, "r", "x", fence=stale)))[0].reason == "FENCED"
        await co.CloseSession(
            pb.CloseSessionRequest(conversation_id=conv, session_id=s1.session_id)
        )

        # A stream that ends on the server's side: its conversation is deleted.
        streamed = await new_conv(bb)  # CreateConversation: 2
        recorder = Recorder(bb, pb.SubscribeRequest(conversation_id=streamed))
        reading = asyncio.create_task(recorder.read())
        await wait_until(lambda: recorder.synced is not None)
        live = Delta(before, await scrape(running.metrics_port))
        assert live("blackboard_subscribers") == 1
        for i in range(3):
            await put(bb, streamed, f"e{i}", "x")
        await wait_until(lambda: len(recorder.events) == 3)
        await bb.DeleteConversation(pb.DeleteConversationRequest(id=streamed))
        await asyncio.wait_for(reading, 10)
        assert recorder.error is not None
        assert recorder.error.code() == grpc.StatusCode.NOT_FOUND
        d = Delta(before, await scrape(running.metrics_port))

        assert d.rpc("grpc_server_started_total", BB, "CreateConversation") == 2
        assert d.rpc("grpc_server_handled_total", BB, "CreateConversation", grpc_code="OK") == 2
        assert d.rpc("grpc_server_started_total", BB, "Put") == 8
        assert d.rpc("grpc_server_handled_total", BB, "Put", grpc_code="OK") == 6
        assert d.rpc("grpc_server_handled_total", BB, "Put", grpc_code="FAILED_PRECONDITION") == 2
        assert d.rpc("grpc_server_handling_seconds_count", BB, "Put") == 8
        assert d.rpc("grpc_server_msg_received_total", BB, "Put") == 8
        assert d.rpc("grpc_server_msg_sent_total", BB, "Put") == 6
        assert d.rpc("grpc_server_handled_total", BB, "Txn", grpc_code="OK") == 1
        assert d.rpc("grpc_server_handled_total", CO, "AcquireLock", grpc_code="OK") == 2
        # The stream: one request, every message the client got, ended by the deletion.
        sub = ("Subscribe", "server_stream")
        assert d.rpc("grpc_server_started_total", BB, *sub) == 1
        assert d.rpc("grpc_server_msg_received_total", BB, *sub) == 1
        assert d.rpc("grpc_server_msg_sent_total", BB, *sub) == len(recorder.kinds)
        assert d.rpc("grpc_server_handled_total", BB, *sub, grpc_code="NOT_FOUND") == 1
        assert d.rpc("grpc_server_handling_seconds_count", BB, *sub) == 1
        assert d("blackboard_subscribers") == 0
        batches = recorder.kinds.count("events")
        assert d("blackboard_delivery_lag_seconds_count") == batches
        assert d("blackboard_subscriber_lag_events_count") == batches
        # Blackboard's own.
        assert d("blackboard_writes_total", kind="put", outcome="ok") == 5
        assert d("blackboard_writes_total", kind="put", outcome="replayed") == 1
        assert d("blackboard_writes_total", kind="put", outcome="conflict") == 1
        assert d("blackboard_writes_total", kind="put", outcome="fenced") == 1
        assert d("blackboard_writes_total", kind="txn", outcome="conflict") == 1
        assert d("blackboard_cas_conflicts_total", kind="put") == 1
        assert d("blackboard_cas_conflicts_total", kind="txn") == 1
        assert d("blackboard_fenced_rejections_total", kind="put") == 1
        assert d("blackboard_idempotent_replays_total", kind="put") == 1
        assert d("blackboard_sessions_opened_total") == 2
        assert d("blackboard_sessions_closed_total") == 1
        assert d("blackboard_acquisitions_total", kind="lock") == 2
        assert d("blackboard_releases_total", kind="lock") == 1
        retention = d.after[("blackboard_changelog_retention_events", frozenset())]
        assert retention == running.settings.retention
        store = "memory" if running.settings.embedded else "redis"
        calls = "blackboard_backend_call_seconds_count"
        assert d(calls, backend=store, operation="create_conversation") == 2
        assert d(calls, backend=store, operation="delete_conversation") == 1
        errors = [k for k in d.after if k[0] == "blackboard_backend_errors_total"]
        assert all(d.after[k] == 0 for k in errors)

        # A subscriber that stops reading is ended: one slow-subscriber disconnect.
        slow_conv = await new_conv(bb)
        slow = Recorder(bb, pb.SubscribeRequest(conversation_id=slow_conv))
        assert (await slow.call.read()).WhichOneof("message") == "snapshot"
        for i in range(400):
            await put(bb, slow_conv, f"k{i % 5}", "x" * 20_000)
        await slow.read()
        assert slow.error is not None and details(slow.error)[0].reason == "SLOW_SUBSCRIBER"
        d = Delta(before, await scrape(running.metrics_port))
        assert d("blackboard_slow_subscriber_disconnects_total") == 1
        exhausted = d.rpc("grpc_server_handled_total", BB, *sub, grpc_code="RESOURCE_EXHAUSTED")
        assert exhausted == 1
        assert d.rpc("grpc_server_started_total", BB, *sub) == 2


@pytest.mark.parametrize("coordinator", ["memory", "etcd"])
async def test_coordination_gauges_count_what_is_live(
    make_server: Any, coordinator: str, request: pytest.FixtureRequest
) -> None:
    etcd = ",".join(request.getfixturevalue("etcd").endpoints) if coordinator == "etcd" else ""
    settings = {"etcd_endpoints": etcd, "etcd_prefix": f"/bb-{uuid.uuid4().hex[:8]}"}
    async with (
        make_server(metrics_port=free_port(), census_interval_s=0.1, **settings) as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        bb, co = pb_grpc.BlackboardStub(channel), pb_grpc.CoordinationStub(channel)
        conv = await new_conv(bb)
        gauges = ("blackboard_sessions", "blackboard_locks_held", "blackboard_leaders")

        async def counted(expected: tuple[float, ...]) -> None:
            seen: tuple[float, ...] = ()
            async with asyncio.timeout(10):
                while seen != expected:
                    samples = await scrape(running.metrics_port)
                    seen = tuple(samples.get((g, frozenset()), -1.0) for g in gauges)
                    await asyncio.sleep(0.05)

        await counted((0, 0, 0))
        s1 = await co.OpenSession(pb.OpenSessionRequest(conversation_id=conv, ttl_ms=10_000))
        s2 = await co.OpenSession(pb.OpenSessionRequest(conversation_id=conv, ttl_ms=10_000))
        await co.AcquireLock(
            pb.AcquireLockRequest(conversation_id=conv, name="job", session_id=s1.session_id)
        )
        await co.Campaign(
            pb.CampaignRequest(conversation_id=conv, role="lead", session_id=s2.session_id)
        )
        await counted((2, 1, 1))
        await co.CloseSession(
            pb.CloseSessionRequest(conversation_id=conv, session_id=s1.session_id)
        )
        await counted((1, 0, 1))


async def test_tracing_a_put_yields_an_rpc_span_with_a_child_store_span(backend: str) -> None:
    exporter = InMemorySpanExporter()
    settings = Settings(listen="127.0.0.1:0", redis_url=backend, durability="fast", uvloop=False)
    async with (
        serve(settings, span_exporter=exporter) as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        bb = pb_grpc.BlackboardStub(channel)
        conv = await new_conv(bb)
        exporter.clear()
        await put(bb, conv, "k", "v")
        spans = exporter.get_finished_spans()
    rpc = [s for s in spans if s.name == f"{BB}/Put"]
    assert len(rpc) == 1 and rpc[0].kind == SpanKind.SERVER
    parent = rpc[0].context
    assert parent is not None
    store = "memory" if not backend else "redis"
    children = [s for s in spans if s.parent is not None and s.parent.span_id == parent.span_id]
    assert [s.name for s in children] == [f"{store} commit"]
    assert children[0].kind == SpanKind.CLIENT
    assert children[0].context is not None
    assert children[0].context.trace_id == parent.trace_id


class Collector:
    """An OTLP/gRPC trace collector: keeps the span names it is sent."""

    def __init__(self) -> None:
        self.names: list[str] = []

    async def Export(self, request: Any, context: Any) -> Any:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.names.extend(span.name for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_otlp_exports_the_spans_to_a_collector() -> None:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    collector, receiver = Collector(), grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)  # type: ignore[no-untyped-call]
    port = receiver.add_insecure_port("127.0.0.1:0")
    await receiver.start()
    try:
        settings = Settings(
            listen="127.0.0.1:0",
            uvloop=False,
            tracing="otlp",
            otlp_endpoint=f"http://127.0.0.1:{port}",
        )
        async with (
            serve(settings) as running,
            grpc.aio.insecure_channel(running.address) as channel,
        ):
            bb = pb_grpc.BlackboardStub(channel)
            conv = await new_conv(bb)
            await put(bb, conv, "k", "v")
        # Closing the server flushes the batch of spans to the collector.
        assert f"{BB}/Put" in collector.names and "memory commit" in collector.names
        assert f"{BB}/CreateConversation" in collector.names
    finally:
        await receiver.stop(None)


def test_tracing_is_off_by_default() -> None:
    assert Settings().tracing == "off"
    assert open_tracing("off", "") is None  # no provider, so no span is ever made


def log_lines(process: ServerProcess) -> list[dict[str, Any]]:
    text = (process.workdir / "server.log").read_text()
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_access_lines_carry_the_call_and_never_the_token(tmp_path: Path) -> None:
    token = f"secret-{uuid.uuid4().hex}"
    process = ServerProcess(tmp_path / "server").start()
    try:
        async with grpc.aio.insecure_channel(process.address) as channel:
            bb = pb_grpc.BlackboardStub(channel)
            auth = (("authorization", f"Bearer {token}"), ("x-agent-id", "alice"))
            conv = await new_conv(bb)
            meta = (*auth, ("x-request-id", "req-ok"))
            await bb.Put(
                pb.PutRequest(conversation_id=conv, key="k", value=pb.Value(data=b"v")),
                metadata=meta,
            )
            missing = pb.GetRequest(conversation_id=conv, key="absent")
            await error_of(bb.Get(missing, metadata=(*auth, ("x-request-id", "req-missing"))))
    finally:
        process.stop()
    log = (process.workdir / "server.log").read_text()
    assert token not in log
    lines = {line.get("request_id"): line for line in log_lines(process) if line["event"] == "rpc"}
    ok, failed = lines["req-ok"], lines["req-missing"]
    common = {"tenant": "default", "conversation": conv, "agent": "alice", "level": "info"}
    assert ok.items() >= {**common, "rpc": "Blackboard/Put", "code": "OK", "reason": ""}.items()
    assert (
        failed.items()
        >= {
            **common,
            "rpc": "Blackboard/Get",
            "code": "NOT_FOUND",
            "reason": "KEY_NOT_FOUND",
        }.items()
    )
    for line in (ok, failed):
        assert isinstance(line["ms"], float) and line["ms"] >= 0
        assert "timestamp" in line
    # One line per call, and none at info for the harness's health checks (probes
    # would flood the log): those go to debug.
    rpc_lines = [line for line in log_lines(process) if line["event"] == "rpc"]
    calls = Counter(line["request_id"] for line in rpc_lines)
    assert set(calls.values()) == {1}
    assert {line["rpc"] for line in rpc_lines} == {
        "Blackboard/CreateConversation",
        "Blackboard/Put",
        "Blackboard/Get",
    }


async def test_health_checks_are_logged_at_debug(tmp_path: Path) -> None:
    process = ServerProcess(tmp_path / "server", "--log-level", "debug").start()
    process.stop()
    probes = [
        line
        for line in log_lines(process)
        if line["event"] == "rpc" and line["rpc"] == "Health/Check"
    ]
    assert probes and {line["level"] for line in probes} == {"debug"}
