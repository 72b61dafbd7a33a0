"""The tenant matrix: every RPC of both services, streams included, called with no
token, a bad token, expired tokens, a role-less identity, another tenant's
identity, and each role. Each call must end with exactly the expected code, and
a refused call must leave tenant A's state as it was.

It runs against a real server process on Redis and etcd, and in embedded mode;
the process run also checks that no token reaches the log or /metrics, and that
the two tenants' data live apart in Redis keys and etcd paths.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from blackboard_server.app import serve
from blackboard_server.config import Settings
from tests.identities import AUDIENCE, ISSUER, TokenFile, make_jwt
from tests.servers import EtcdCluster, RedisServer, ServerProcess, free_port, require

pytestmark = pytest.mark.timeout(300)

SECRET = b"matrix-" + b"k" * 57
OK, UNAUTH, DENIED, NOT_FOUND, FAILED = (
    grpc.StatusCode.OK,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
)
READER, WRITER, ADMIN = 1, 2, 3


@dataclass
class Endpoint:
    address: str
    process: ServerProcess | None = None
    metrics_port: int = 0
    redis_url: str = ""
    etcd: list[str] | None = None
    etcd_prefix: str = ""


@dataclass
class Caller:
    """One column of the matrix: the metadata a call carries."""

    name: str
    metadata: tuple[tuple[str, str], ...]
    role: int = 0  # the role it has in tenant A; 0: none
    tenant_b: bool = False  # an identity of tenant B (its own namespace)
    tenant_wide: bool = True  # its role is on every conversation, not a pattern


class Calls:
    """The stubs of one caller, and an admin of tenant A to prepare what a call needs."""

    def __init__(self, channel: grpc.aio.Channel, admin: Caller, conv: str) -> None:
        self.bb = pb_grpc.BlackboardStub(channel)
        self.co = pb_grpc.CoordinationStub(channel)
        self.admin = admin.metadata
        self.conv = conv

    # --- preparations, as tenant A's admin ------------------------------------------

    async def session(self) -> str:
        opened = await self.co.OpenSession(
            pb.OpenSessionRequest(conversation_id=self.conv, ttl_ms=60_000), metadata=self.admin
        )
        return opened.session_id

    async def lock(self) -> tuple[str, str, int]:
        session, name = await self.session(), fresh("lock")
        held = await self.co.AcquireLock(
            pb.AcquireLockRequest(conversation_id=self.conv, session_id=session, name=name),
            metadata=self.admin,
        )
        return session, name, held.token

    async def leader(self) -> tuple[str, str, int]:
        session, role = await self.session(), fresh("role")
        held = await self.co.Campaign(
            pb.CampaignRequest(conversation_id=self.conv, session_id=session, role=role),
            metadata=self.admin,
        )
        return session, role, held.token

    async def conversation(self) -> str:
        conv = fresh("c-doomed")
        await self.bb.CreateConversation(pb.CreateConversationRequest(id=conv), metadata=self.admin)
        return conv


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def first_message(call: Any) -> Any:
    """A stream's first message; the stream is then cancelled."""
    try:
        message = await call.read()
        assert message is not grpc.aio.EOF
        return message
    finally:
        call.cancel()


Metadata = tuple[tuple[str, str], ...]
Invoke = Callable[[Metadata], Awaitable[Any]]
# Prepares what the call needs (as tenant A's admin) and returns the call itself.
Prepare = Callable[[Calls], Awaitable[Invoke]]


def ready(call: Callable[[Calls, Metadata], Awaitable[Any]]) -> Prepare:
    async def prepare(c: Calls) -> Invoke:
        return lambda md: call(c, md)

    return prepare


async def _create(c: Calls) -> Invoke:
    return lambda md: c.bb.CreateConversation(
        pb.CreateConversationRequest(id=fresh("c-new")), metadata=md
    )


async def _delete_conversation(c: Calls) -> Invoke:
    target = await c.conversation()
    return lambda md: c.bb.DeleteConversation(pb.DeleteConversationRequest(id=target), metadata=md)


async def _delete(c: Calls) -> Invoke:
    key = fresh("gone")
    await c.bb.Put(put(c.conv, key), metadata=c.admin)
    return lambda md: c.bb.Delete(pb.DeleteRequest(conversation_id=c.conv, key=key), metadata=md)


async def _keep_alive(c: Calls) -> Invoke:
    request = pb.KeepAliveRequest(conversation_id=c.conv, session_id=await c.session())
    return lambda md: c.co.KeepAlive(request, metadata=md)


async def _close_session(c: Calls) -> Invoke:
    request = pb.CloseSessionRequest(conversation_id=c.conv, session_id=await c.session())
    return lambda md: c.co.CloseSession(request, metadata=md)


async def _acquire(c: Calls) -> Invoke:
    request = pb.AcquireLockRequest(
        conversation_id=c.conv, session_id=await c.session(), name=fresh("lock")
    )
    return lambda md: c.co.AcquireLock(request, metadata=md)


async def _release(c: Calls) -> Invoke:
    session, name, token = await c.lock()
    request = pb.ReleaseLockRequest(
        conversation_id=c.conv, session_id=session, name=name, token=token
    )
    return lambda md: c.co.ReleaseLock(request, metadata=md)


async def _get_lock(c: Calls) -> Invoke:
    _, name, _ = await c.lock()
    return lambda md: c.co.GetLock(
        pb.GetLockRequest(conversation_id=c.conv, name=name), metadata=md
    )


async def _campaign(c: Calls) -> Invoke:
    request = pb.CampaignRequest(
        conversation_id=c.conv, session_id=await c.session(), role=fresh("role")
    )
    return lambda md: c.co.Campaign(request, metadata=md)


async def _proclaim(c: Calls) -> Invoke:
    session, role, token = await c.leader()
    request = pb.ProclaimRequest(
        conversation_id=c.conv, session_id=session, role=role, token=token, value=b"v2"
    )
    return lambda md: c.co.Proclaim(request, metadata=md)


async def _resign(c: Calls) -> Invoke:
    session, role, token = await c.leader()
    request = pb.ResignRequest(conversation_id=c.conv, session_id=session, role=role, token=token)
    return lambda md: c.co.Resign(request, metadata=md)


async def _get_leader(c: Calls) -> Invoke:
    _, role, _ = await c.leader()
    return lambda md: c.co.GetLeader(
        pb.GetLeaderRequest(conversation_id=c.conv, role=role), metadata=md
    )


async def streamed_write(c: Calls, md: Metadata) -> pb.WriteResult:
    """One put through a Write stream. The stream is admitted for any verified identity
    and the write authorized on its own: a refused write comes back as its outcome,
    raised here as the status the unary Put would have ended with."""
    write = pb.StreamedWrite(sequence=7, put=put(c.conv, fresh("w")))
    for attempt in range(1, 6):
        call = c.bb.Write(metadata=md)
        try:
            await call.write(pb.WriteStreamRequest(writes=[write]))
            break
        except grpc.aio.AioRpcError as error:
            # The server refused the stream (its status is logged right) while the send
            # was in flight: grpc.aio then reports the send's failure, INTERNAL from
            # Core, in place of the stream's status. Only that is tried again.
            if error.details() != "Internal error from Core" or attempt == 5:
                raise
    response = await call.read()
    if response is grpc.aio.EOF:  # the stream ended without a word: its status says why
        raise grpc.aio.AioRpcError(await call.code(), grpc.aio.Metadata(), grpc.aio.Metadata())
    await call.done_writing()
    (outcome,) = response.outcomes
    assert outcome.sequence == 7
    if outcome.WhichOneof("outcome") == "error":
        code = next(c for c in grpc.StatusCode if c.value[0] == outcome.error.code)
        raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata())
    return outcome.result


def put(conv: str, key: str) -> pb.PutRequest:
    return pb.PutRequest(conversation_id=conv, key=key, value=pb.Value(data=b"v"))


# RPC -> (the role it needs in tenant A, the call, the code another tenant's admin gets:
# A's conversation does not exist in B's namespace).
MATRIX: dict[str, tuple[int, Prepare, grpc.StatusCode]] = {
    "Blackboard/CreateConversation": (ADMIN, _create, OK),
    "Blackboard/GetConversation": (
        READER,
        ready(
            lambda c, md: c.bb.GetConversation(pb.GetConversationRequest(id=c.conv), metadata=md)
        ),
        NOT_FOUND,
    ),
    "Blackboard/ListConversations": (
        READER,
        ready(lambda c, md: c.bb.ListConversations(pb.ListConversationsRequest(), metadata=md)),
        OK,
    ),
    "Blackboard/DeleteConversation": (ADMIN, _delete_conversation, NOT_FOUND),
    "Blackboard/Get": (
        READER,
        ready(
            lambda c, md: c.bb.Get(pb.GetRequest(conversation_id=c.conv, key="seed"), metadata=md)
        ),
        NOT_FOUND,
    ),
    "Blackboard/Range": (
        READER,
        ready(lambda c, md: c.bb.Range(pb.RangeRequest(conversation_id=c.conv), metadata=md)),
        NOT_FOUND,
    ),
    "Blackboard/History": (
        READER,
        ready(lambda c, md: c.bb.History(pb.HistoryRequest(conversation_id=c.conv), metadata=md)),
        NOT_FOUND,
    ),
    "Blackboard/Subscribe": (
        READER,
        ready(
            lambda c, md: first_message(
                c.bb.Subscribe(pb.SubscribeRequest(conversation_id=c.conv), metadata=md)
            )
        ),
        NOT_FOUND,
    ),
    "Blackboard/Put": (
        WRITER,
        ready(lambda c, md: c.bb.Put(put(c.conv, fresh("k")), metadata=md)),
        NOT_FOUND,
    ),
    "Blackboard/Delete": (WRITER, _delete, NOT_FOUND),
    "Blackboard/Write": (WRITER, ready(streamed_write), NOT_FOUND),
    "Blackboard/Append": (
        WRITER,
        ready(
            lambda c, md: c.bb.Append(
                pb.AppendRequest(conversation_id=c.conv, key="log", value=pb.Value(data=b"m")),
                metadata=md,
            )
        ),
        NOT_FOUND,
    ),
    "Blackboard/Patch": (
        WRITER,
        ready(
            lambda c, md: c.bb.Patch(
                pb.PatchRequest(conversation_id=c.conv, key=fresh("doc"), merge_patch=b'{"a":1}'),
                metadata=md,
            )
        ),
        NOT_FOUND,
    ),
    "Blackboard/Txn": (
        WRITER,
        ready(
            lambda c, md: c.bb.Txn(
                pb.TxnRequest(
                    conversation_id=c.conv,
                    success=[pb.TxnOp(put=pb.TxnOp.Put(key=fresh("t"), value=pb.Value(data=b"1")))],
                ),
                metadata=md,
            )
        ),
        NOT_FOUND,
    ),
    "Blackboard/GrantRole": (
        ADMIN,
        ready(
            lambda c, md: c.bb.GrantRole(
                pb.GrantRoleRequest(conversation_id=c.conv, subject="guest", role=pb.ROLE_READER),
                metadata=md,
            )
        ),
        NOT_FOUND,
    ),
    "Blackboard/RevokeRole": (
        ADMIN,
        ready(
            lambda c, md: c.bb.RevokeRole(
                pb.RevokeRoleRequest(conversation_id=c.conv, subject="guest"), metadata=md
            )
        ),
        NOT_FOUND,
    ),
    "Blackboard/ListGrants": (
        ADMIN,
        ready(
            lambda c, md: c.bb.ListGrants(pb.ListGrantsRequest(conversation_id=c.conv), metadata=md)
        ),
        NOT_FOUND,
    ),
    "Coordination/OpenSession": (
        WRITER,
        ready(
            lambda c, md: c.co.OpenSession(
                pb.OpenSessionRequest(conversation_id=c.conv), metadata=md
            )
        ),
        NOT_FOUND,
    ),
    "Coordination/KeepAlive": (WRITER, _keep_alive, NOT_FOUND),
    "Coordination/CloseSession": (WRITER, _close_session, NOT_FOUND),
    "Coordination/ListSessions": (
        READER,
        ready(
            lambda c, md: c.co.ListSessions(
                pb.ListSessionsRequest(conversation_id=c.conv), metadata=md
            )
        ),
        NOT_FOUND,
    ),
    "Coordination/AcquireLock": (WRITER, _acquire, NOT_FOUND),
    "Coordination/ReleaseLock": (WRITER, _release, FAILED),
    "Coordination/GetLock": (READER, _get_lock, NOT_FOUND),
    "Coordination/Campaign": (WRITER, _campaign, NOT_FOUND),
    "Coordination/Proclaim": (WRITER, _proclaim, FAILED),
    "Coordination/Resign": (WRITER, _resign, FAILED),
    "Coordination/GetLeader": (READER, _get_leader, NOT_FOUND),
    "Coordination/Observe": (
        READER,
        ready(
            lambda c, md: first_message(
                c.co.Observe(pb.ObserveRequest(conversation_id=c.conv, role="nobody"), metadata=md)
            )
        ),
        NOT_FOUND,
    ),
}


def test_the_matrix_has_every_rpc_of_both_services() -> None:
    names = {
        f"{service.name}/{method.name}"
        for service in pb.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert set(MATRIX) == names


def expected(caller: Caller, rpc: str) -> grpc.StatusCode:
    need, _, other_tenant = MATRIX[rpc]
    if caller.name in ("no token", "bad token", "expired jwt", "expired token"):
        return UNAUTH
    if caller.name == "tenant B naming A":
        return DENIED
    if caller.tenant_b:
        return other_tenant
    if rpc == "Blackboard/ListConversations" and not caller.tenant_wide:
        return DENIED  # listing needs a role on the whole tenant
    return OK if caller.role >= need else DENIED


# --- the run ---------------------------------------------------------------------------


def columns(tokens: TokenFile) -> tuple[Caller, list[Caller]]:
    def bearer(token: str, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
        # The agent header is a lie: with auth on the server must not believe it.
        return (("authorization", f"Bearer {token}"), ("x-agent-id", "spoofed"), *extra)

    admin = Caller("admin", bearer(tokens.add("tenant-a", "a-admin", ["admin"])), ADMIN)
    writer_jwt = make_jwt(SECRET, "HS256", tenant="tenant-a", sub="a-writer", roles=["writer"])
    expired_jwt = make_jwt(SECRET, "HS256", tenant="tenant-a", sub="a-x", expires_in=-3600)
    expired_token = tokens.add("tenant-a", "a-old", ["admin"], expires_unix=1)
    b_admin = tokens.add("tenant-b", "b-admin", ["admin"])
    return admin, [
        Caller("no token", (("x-agent-id", "a-admin"),)),
        Caller("bad token", bearer("bbt_not-a-real-token")),
        Caller("expired jwt", bearer(expired_jwt)),
        Caller("expired token", bearer(expired_token)),
        Caller("no role", bearer(tokens.add("tenant-a", "a-nobody", []))),
        Caller("reader", bearer(tokens.add("tenant-a", "a-reader", ["reader"])), READER),
        Caller("writer (jwt)", bearer(writer_jwt), WRITER),
        Caller(
            "conversation admin",
            bearer(tokens.add("tenant-a", "a-owner", ["c-*:admin"])),
            ADMIN,
            tenant_wide=False,
        ),
        admin,
        Caller("tenant B", bearer(b_admin), tenant_b=True),
        Caller("tenant B naming A", bearer(b_admin, ("x-tenant", "tenant-a")), tenant_b=True),
    ]


async def state_of(c: Calls) -> tuple[Any, ...]:
    """All of tenant A's conversation that a refused call could have changed."""
    md = c.admin
    rng = await c.bb.Range(pb.RangeRequest(conversation_id=c.conv, page_size=1000), metadata=md)
    conv = await c.bb.GetConversation(pb.GetConversationRequest(id=c.conv), metadata=md)
    grants = await c.bb.ListGrants(pb.ListGrantsRequest(conversation_id=c.conv), metadata=md)
    listed = await c.bb.ListConversations(pb.ListConversationsRequest(page_size=1000), metadata=md)
    sessions = await c.co.ListSessions(pb.ListSessionsRequest(conversation_id=c.conv), metadata=md)
    return (
        rng.SerializeToString(),
        conv.SerializeToString(),
        grants.SerializeToString(),
        sorted(x.id for x in listed.conversations),
        sorted(s.session_id for s in sessions.sessions),
    )


async def outcome(call: Awaitable[Any]) -> tuple[grpc.StatusCode, Any]:
    try:
        return OK, await call
    except grpc.aio.AioRpcError as error:
        return error.code(), error


async def run_matrix(address: str, admin: Caller, callers: list[Caller]) -> dict[str, Caller]:
    conv = f"c-{uuid.uuid4().hex[:10]}"  # "c-*:admin" covers it
    async with grpc.aio.insecure_channel(address) as channel:
        calls = Calls(channel, admin, conv)
        await calls.bb.CreateConversation(
            pb.CreateConversationRequest(id=conv), metadata=admin.metadata
        )
        await calls.bb.Put(put(conv, "seed"), metadata=admin.metadata)
        wrong: list[str] = []
        for caller in callers:
            for rpc, (_, prepare, _) in MATRIX.items():
                want = expected(caller, rpc)
                invoke = await prepare(calls)
                before = await state_of(calls) if want is not OK else None
                code, result = await outcome(invoke(caller.metadata))
                if code is not want:
                    wrong.append(f"{caller.name} {rpc}: {code.name}, expected {want.name}")
                    continue
                if before is not None:
                    assert await state_of(calls) == before, (caller.name, rpc)
                if code is OK and rpc == "Coordination/OpenSession":
                    assert result.agent_id == agent_of(caller), caller.name
                if code is OK and rpc == "Blackboard/Put":
                    entry = await calls.bb.Get(
                        pb.GetRequest(conversation_id=conv, key=result.key), metadata=admin.metadata
                    )
                    assert entry.entry.provenance.agent_id == agent_of(caller), caller.name
                if code is OK and rpc == "Blackboard/CreateConversation":
                    assert result.tenant == ("tenant-b" if caller.tenant_b else "tenant-a")
                if code is OK and rpc == "Blackboard/ListConversations" and caller.tenant_b:
                    assert conv not in {x.id for x in result.conversations}
        assert not wrong, "\n".join(wrong)
        await same_id_in_tenant_b(calls, next(c for c in callers if c.name == "tenant B"))
    return {c.name: c for c in callers}


async def same_id_in_tenant_b(calls: Calls, b: Caller) -> None:
    """Tenant B makes a conversation with A's id: two conversations, neither sees the other."""
    before = await state_of(calls)
    md = b.metadata
    created = await calls.bb.CreateConversation(
        pb.CreateConversationRequest(id=calls.conv), metadata=md
    )
    assert created.tenant == "tenant-b" and created.revision == 0
    await calls.bb.Put(put(calls.conv, "seed"), metadata=md)
    session = await calls.co.OpenSession(
        pb.OpenSessionRequest(conversation_id=calls.conv, ttl_ms=60_000), metadata=md
    )
    seen = await calls.bb.Range(pb.RangeRequest(conversation_id=calls.conv), metadata=md)
    assert [e.key for e in seen.entries] == ["seed"] and seen.revision == 2  # B's own two
    assert seen.entries[0].provenance.agent_id == "b-admin"
    sessions = await calls.co.ListSessions(
        pb.ListSessionsRequest(conversation_id=calls.conv), metadata=md
    )
    assert [s.session_id for s in sessions.sessions] == [session.session_id]
    assert await state_of(calls) == before  # A's conversation is untouched


def agent_of(caller: Caller) -> str:
    return {
        "reader": "a-reader",
        "writer (jwt)": "a-writer",
        "conversation admin": "a-owner",
        "admin": "a-admin",
        "tenant B": "b-admin",
    }[caller.name]


# --- against a server process on Redis and etcd ----------------------------------------


@pytest.fixture
def secured(redis_server: RedisServer, etcd: EtcdCluster, tmp_path: Path) -> AsyncIterator[Any]:
    tokens = TokenFile(tmp_path / "tokens.json")
    admin, callers = columns(tokens)  # the file is complete before the server starts
    keys = tmp_path / "jwt.secret"
    keys.write_bytes(SECRET)
    metrics_port = free_port()
    prefix = f"/bb-{uuid.uuid4().hex[:8]}"
    process = ServerProcess(
        tmp_path / "server",
        "--redis-url", redis_server.url,
        "--durability", "fast",
        "--etcd-endpoints", ",".join(etcd.endpoints),
        "--etcd-prefix", prefix,
        "--auth", "tokens,jwt",
        "--auth-tokens-file", str(tokens.path),
        "--jwt-keys-file", str(keys),
        "--jwt-issuer", ISSUER,
        "--jwt-audience", AUDIENCE,
        "--metrics-port", str(metrics_port),
    )  # fmt: skip
    process.start()
    yield (
        process,
        (admin, callers),
        Endpoint(process.address, process, metrics_port, redis_server.url, etcd.endpoints, prefix),
    )
    process.stop()


async def test_the_tenant_matrix_on_redis_and_etcd(secured: Any) -> None:
    process, (admin, columns_), endpoint = secured
    callers = await run_matrix(endpoint.address, admin, columns_)
    scraped = await asyncio.to_thread(scrape, endpoint.metrics_port)
    assert 'grpc_code="PERMISSION_DENIED"' in scraped and 'grpc_code="UNAUTHENTICATED"' in scraped
    process.stop()
    log = (process.workdir / "server.log").read_text()
    for caller in callers.values():
        for key, value in caller.metadata:
            if key == "authorization":
                token = value.removeprefix("Bearer ")
                assert token not in log, caller.name
                assert token not in scraped, caller.name
    # The access log names the verified tenant and agent, never the header's.
    assert '"agent": "spoofed"' not in log and '"agent":"spoofed"' not in log
    assert '"tenant": "tenant-b"' in log or '"tenant":"tenant-b"' in log
    check_tenants_apart(endpoint)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def check_tenants_apart(endpoint: Endpoint) -> None:
    """Every Redis key and etcd path of a conversation names its tenant."""
    client = redis.Redis.from_url(endpoint.redis_url)
    try:
        # Only this test's two tenants: other tests share the Redis with tenants of their own.
        keys = [k.decode() for k in client.scan_iter(match="bb:{tenant-[ab]/*", count=1000)]
    finally:
        client.close()
    a = {k for k in keys if k.startswith("bb:{tenant-a/")}
    b = {k for k in keys if k.startswith("bb:{tenant-b/")}
    assert a and b and a | b == set(keys)
    # Tenant B created conversations of its own: nothing of it is under A's tags.
    assert all(k.split("/")[0] == "bb:{tenant-b" for k in b)
    listed = subprocess.run(
        [
            require("etcdctl"),
            "--endpoints", ",".join(endpoint.etcd or []),
            "get", "--prefix", "--keys-only", endpoint.etcd_prefix + "/t/",
        ],
        capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"}, check=True,
    )  # fmt: skip
    paths = [p for p in listed.stdout.splitlines() if p]
    # Under each tenant: its conversations (c/) and the index of its sessions (s/, quotas).
    in_a = [p for p in paths if p.startswith(endpoint.etcd_prefix + "/t/tenant-a/")]
    in_b = [p for p in paths if p.startswith(endpoint.etcd_prefix + "/t/tenant-b/")]
    assert in_a and in_b and len(in_a) + len(in_b) == len(paths)


# --- embedded mode -----------------------------------------------------------------------


async def test_the_tenant_matrix_in_embedded_mode(tmp_path: Path) -> None:
    tokens = TokenFile(tmp_path / "tokens.json")
    admin, callers = columns(tokens)
    keys = tmp_path / "jwt.secret"
    keys.write_bytes(SECRET)
    settings = Settings(
        listen="127.0.0.1:0",
        uvloop=False,
        auth="tokens,jwt",
        auth_tokens_file=str(tokens.path),
        jwt_keys_file=str(keys),
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
    ).replace()
    async with serve(settings) as running:
        await asyncio.wait_for(run_matrix(running.address, admin, callers), 240)
