"""TLS and client certificates, with certificates made for each test (trustme);
bearer tokens reloaded from their file while the server runs; roles granted and
revoked on a conversation; start-up refusals. The SDK is the client."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from blackboard_client import (
    CredentialsInvalid,
    CredentialsMissing,
    Grant,
    KeyNotFound,
    RetryPolicy,
    RoleRequired,
    Tls,
    Unavailable,
    connect,
    sync,
)
from blackboard_server.app import RunningServer, serve
from blackboard_server.config import Settings
from tests.identities import Pki, TokenFile

pytestmark = pytest.mark.timeout(120)
FAST = {"timeout": 5.0}
ONCE = RetryPolicy(attempts=1)


@asynccontextmanager
async def server(**settings: object) -> AsyncIterator[RunningServer]:
    base = Settings(listen="127.0.0.1:0", uvloop=False)
    async with serve(base.replace(**settings)) as running:
        yield running


def tls_settings(pki: Pki, *, require_client: bool = False) -> dict[str, object]:
    settings: dict[str, object] = {"tls_cert_file": pki.cert_file, "tls_key_file": pki.key_file}
    if require_client:
        settings.update(tls_client_ca_file=pki.ca_file, tls_client_auth="require")
    return settings


async def refused(address: str, **options: object) -> Exception:
    """The error of a call that must not get through; the client gives up quickly."""
    async with connect(address, retry=ONCE, timeout=3.0, **options) as bb:  # type: ignore[arg-type]
        try:
            await bb.get_conversation("nothing")
        except Exception as error:
            return error
    raise AssertionError("the call got through")


async def test_with_tls_on_plaintext_and_a_wrong_ca_are_refused(tmp_path: Path) -> None:
    pki, other = Pki(tmp_path / "pki"), Pki(tmp_path / "other")
    tokens = TokenFile(tmp_path / "tokens.json")
    token = tokens.add("acme", "robot", ["admin"])
    async with server(
        auth="tokens", auth_tokens_file=str(tokens.path), **tls_settings(pki)
    ) as running:
        assert isinstance(await refused(running.address, token=token), Unavailable)
        wrong_ca = await refused(running.address, token=token, tls=Tls(ca_file=other.ca_file))
        assert isinstance(wrong_ca, Unavailable)
        async with connect(
            running.address, token=token, tls=Tls(ca_file=pki.ca_file), **FAST
        ) as bb:
            created = await bb.create_conversation("c1")
            assert created.tenant == "acme"
        # The server's certificate names 127.0.0.1 and localhost: another name fails.
        renamed = await refused(
            running.address, token=token, tls=Tls(ca_file=pki.ca_file, server_name="evil.test")
        )
        assert isinstance(renamed, Unavailable)
        ok = Tls(ca_file=pki.ca_file, server_name="localhost")
        async with connect(running.address, token=token, tls=ok, **FAST) as bb:
            assert (await bb.get_conversation("c1")).id == "c1"
        no_token = await refused(running.address, tls=Tls(ca_file=pki.ca_file))
        assert isinstance(no_token, CredentialsMissing)


async def test_client_certificates_are_required_checked_and_mapped(tmp_path: Path) -> None:
    pki, other = Pki(tmp_path / "pki"), Pki(tmp_path / "other")
    writer = pki.client("acme", "worker-7", "writer")
    reader = pki.client("acme", "viewer", "reader")
    admin = pki.client("acme", "boss", "admin")
    foreign = other.client("acme", "intruder", "admin")  # right names, wrong CA
    async with server(auth="mtls", **tls_settings(pki, require_client=True)) as running:
        address, ca = running.address, pki.ca_file
        no_cert = await refused(address, tls=Tls(ca_file=ca))
        assert isinstance(no_cert, Unavailable)
        wrong_ca = await refused(
            address, tls=Tls(ca_file=ca, cert_file=foreign[0], key_file=foreign[1])
        )
        assert isinstance(wrong_ca, Unavailable)
        plaintext = await refused(address)
        assert isinstance(plaintext, Unavailable)

        def cert(pair: tuple[str, str]) -> Tls:
            return Tls(ca_file=ca, cert_file=pair[0], key_file=pair[1])

        async with connect(address, tls=cert(admin), **FAST) as bb:
            assert (await bb.create_conversation("c1")).tenant == "acme"
        async with connect(address, tls=cert(writer), agent_id="spoofed", **FAST) as bb:
            written = await bb.put("c1", "k", json=1)
            entry = await bb.get("c1", "k")
            assert entry.provenance.agent_id == "worker-7"  # the certificate's CN
            assert written.revision == 1
        async with connect(address, tls=cert(reader), **FAST) as bb:
            assert (await bb.get("c1", "k")).json() == 1
            with pytest.raises(RoleRequired) as denied:
                await bb.put("c1", "k", json=2)
            assert (denied.value.role, denied.value.conversation_id) == ("writer", "c1")
            assert (await bb.get("c1", "k")).json() == 1  # unchanged
            with pytest.raises(KeyNotFound):
                await bb.get("c1", "other")


async def test_a_renewed_server_certificate_is_used_without_a_restart(tmp_path: Path) -> None:
    old, new = Pki(tmp_path / "old"), Pki(tmp_path / "new")
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "tls.crt", live / "tls.key"
    shutil.copy(old.cert_file, cert)
    shutil.copy(old.key_file, key)
    tokens = TokenFile(tmp_path / "tokens.json")
    token = tokens.add("acme", "robot", ["admin"])
    async with server(
        auth="tokens", auth_tokens_file=str(tokens.path), tls_cert_file=str(cert),
        tls_key_file=str(key),
    ) as running:  # fmt: skip
        async with connect(running.address, token=token, tls=Tls(ca_file=old.ca_file)) as bb:
            await bb.create_conversation("c1")
        # Write the new pair beside and rename over: readers never see half a file.
        for source, target in ((new.key_file, key), (new.cert_file, cert)):
            shutil.copy(source, str(target) + ".tmp")
            os.replace(str(target) + ".tmp", target)
        deadline = time.monotonic() + 15
        while True:
            try:
                async with connect(
                    running.address, token=token, tls=Tls(ca_file=new.ca_file), retry=ONCE,
                    timeout=2.0,
                ) as bb:  # fmt: skip
                    assert (await bb.get_conversation("c1")).id == "c1"
                    break
            except Unavailable:
                assert time.monotonic() < deadline, "the new certificate was not picked up"
                await asyncio.sleep(0.2)


async def test_the_token_file_is_reloaded_while_the_server_runs(tmp_path: Path) -> None:
    tokens = TokenFile(tmp_path / "tokens.json")
    first = tokens.add("acme", "first", ["admin"])
    async with server(auth="tokens", auth_tokens_file=str(tokens.path)) as running:
        async with connect(running.address, token=first, **FAST) as bb:
            await bb.create_conversation("c1")
        second = tokens.add("acme", "second", ["writer"])
        tokens.entries = [e for e in tokens.entries if e["agent_id"] != "first"]
        tokens.write()
        stamp = time.time() + 5  # a rewrite within one mtime tick must still be seen
        os.utime(tokens.path, (stamp, stamp))
        deadline = time.monotonic() + 15
        while True:
            error = await refused_or_none(running.address, first)
            if isinstance(error, CredentialsInvalid):
                break
            assert time.monotonic() < deadline, "the token file was not reloaded"
            await asyncio.sleep(0.1)
        async with connect(running.address, token=second, **FAST) as bb:
            written = await bb.put("c1", f"k-{uuid.uuid4().hex[:6]}", json=1)
            assert written.revision == 1


async def refused_or_none(address: str, token: str) -> Exception | None:
    async with connect(address, token=token, retry=ONCE, timeout=3.0) as bb:
        try:
            await bb.get_conversation("c1")
        except Exception as error:
            return error
    return None


async def test_the_sync_client_takes_a_token_and_tls(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    tokens = TokenFile(tmp_path / "tokens.json")
    token = tokens.add("acme", "script", ["admin"])
    async with server(
        auth="tokens", auth_tokens_file=str(tokens.path), **tls_settings(pki)
    ) as running:

        def script() -> str:
            with sync.connect(running.address, token=token, tls=Tls(ca_file=pki.ca_file)) as bb:
                bb.create_conversation("c1")
                bb.put("c1", "k", json=1)
                return bb.get("c1", "k").provenance.agent_id

        assert await asyncio.to_thread(script) == "script"


async def test_health_is_open_reflection_needs_an_identity(tmp_path: Path) -> None:
    tokens = TokenFile(tmp_path / "tokens.json")
    token = tokens.add("acme", "ops", [])  # no role at all: reflection needs none
    async with (
        server(auth="tokens", auth_tokens_file=str(tokens.path)) as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")

        async def services(metadata: tuple[tuple[str, str], ...]) -> list[str]:
            call = reflect.ServerReflectionInfo(iter([ask]), metadata=metadata, timeout=5)
            async for response in call:
                return [s.name for s in response.list_services_response.service]
            return []

        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await services(())
        assert anonymous.value.code() is grpc.StatusCode.UNAUTHENTICATED
        listed = await services((("authorization", f"Bearer {token}"),))
        assert "blackboard.v1.Blackboard" in listed


STARTS = {
    "missing token file": (
        ["--auth", "tokens", "--auth-tokens-file", "{dir}/missing.json"],
        "auth_tokens_file: cannot read",
    ),
    "short secret": (
        ["--auth", "jwt", "--jwt-keys-file", "{dir}/short", "--jwt-audience", "bb"],
        "at least 32 bytes",
    ),
    "another key": (
        ["--tls-cert-file", "{pki}/server.pem", "--tls-key-file", "{other}/server.key"],
        "does not hold the key",
    ),
    "open without auth": (
        ["--listen", "0.0.0.0:0", "--redis-url", "redis://127.0.0.1:1/0"],
        "needs authentication",
    ),
}


@pytest.mark.parametrize(("args", "message"), STARTS.values(), ids=STARTS.keys())
def test_the_server_refuses_to_start_with_a_clear_message(
    tmp_path: Path, args: list[str], message: str
) -> None:
    Pki(tmp_path / "pki")
    Pki(tmp_path / "other")
    (tmp_path / "short").write_bytes(b"too short")
    values = {"dir": str(tmp_path), "pki": str(tmp_path / "pki"), "other": str(tmp_path / "other")}
    done = subprocess.run(
        [sys.executable, "-m", "blackboard_server", *(a.format(**values) for a in args)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


async def test_an_admin_grants_and_revokes_roles_on_a_conversation(tmp_path: Path) -> None:
    tokens = TokenFile(tmp_path / "tokens.json")
    owner = tokens.add("acme", "owner", ["team-*:admin"])
    bob = tokens.add("acme", "bob", [])  # nothing of its own: only what is granted
    async with (
        server(auth="tokens", auth_tokens_file=str(tokens.path)) as running,
        connect(running.address, token=owner, **FAST) as admin,
        connect(running.address, token=bob, **FAST) as agent,
    ):
        await admin.create_conversation("team-1")
        await admin.create_conversation("team-2")
        with pytest.raises(RoleRequired):
            await agent.put("team-1", "k", json=1)
        await admin.grant_role("team-1", "bob", "writer")
        await admin.grant_role("team-1", "*", "reader")
        assert await admin.list_grants("team-1") == [Grant("*", "reader"), Grant("bob", "writer")]
        written = await agent.put("team-1", "k", json=1)
        assert (await agent.get("team-1", "k")).provenance.agent_id == "bob"
        with pytest.raises(RoleRequired):
            await agent.put("team-2", "k", json=1)  # the grant is on team-1 only
        with pytest.raises(RoleRequired):
            await agent.grant_role("team-1", "bob", "admin")  # writers grant nothing
        with pytest.raises(RoleRequired):
            await agent.list_conversations()  # a grant is not a tenant-wide role
        assert await admin.revoke_role("team-1", "bob") is True
        assert await admin.revoke_role("team-1", "bob") is False
        with pytest.raises(RoleRequired):
            await agent.put("team-1", "k", json=2)
        entry = await agent.get("team-1", "k")  # still a reader, through "*"
        assert entry.json() == 1 and entry.mod_revision == written.revision
        await admin.delete_conversation("team-1")
        await admin.create_conversation("team-1")
        assert await admin.list_grants("team-1") == []  # grants went with the conversation
