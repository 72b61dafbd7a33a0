"""The server against a Redis that wants credentials, TLS or durability.

It runs as the least-privilege ACL user of docs/backends.md (parsed from the
doc, so the two cannot drift apart), on one Redis and on a cluster, and Redis
refuses none of its commands; it refuses to start, with a message that says
why and never the password, when something is wrong.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from tests.integration.test_stream import Recorder
from tests.servers import (
    RedisClusterServers,
    RedisServer,
    ServerProcess,
    free_port,
    make_certificate,
    require,
)

pytestmark = pytest.mark.timeout(180)
BACKENDS_DOC = Path(__file__).resolve().parents[2] / "docs" / "backends.md"
PASSWORD = "s3cret-" + uuid.uuid4().hex[:8]
ADMIN = "admin-" + uuid.uuid4().hex[:8]


def documented_acl(password: str) -> list[str]:
    found = re.search(r"^ACL SETUSER blackboard .*$", BACKENDS_DOC.read_text(), re.M)
    assert found is not None, "docs/backends.md lost its ACL"
    return found.group(0).replace(">CHANGE-ME", f">{password}").split()


def cli(port: int, *args: str, password: str = ADMIN) -> str:
    auth = ["--no-auth-warning", "-a", password] if password else []
    result = subprocess.run(
        [require("redis-cli"), "-p", str(port), *auth, *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return result.stdout


def acl_log(port: int) -> str:
    return cli(port, "ACL", "LOG").strip()


def stored_keys(port: int) -> str:
    """What the server has written: nothing, after a refused start."""
    return cli(port, "--scan", "--pattern", "bb:*").strip()


def start_fails(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Runs the server expecting it to refuse to start."""
    result = subprocess.run(
        [sys.executable, "-m", "blackboard_server", "--listen", f"127.0.0.1:{free_port()}", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    return result


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[RedisServer]:
    """A durable Redis whose default user has a password, plus the documented user."""
    server = RedisServer(tmp_path / "redis", durable=True, extra=("--requirepass", ADMIN)).start()
    cli(server.port, *documented_acl(PASSWORD))
    yield server
    server.stop()


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "redis-password"
    path.write_text(PASSWORD + "\n")
    return path


async def exercise(address: str) -> None:
    """Every kind of Redis call the server makes: scripts, notifications, listing, expiry."""
    conv = f"acl-{uuid.uuid4().hex[:8]}"
    async with grpc.aio.insecure_channel(address) as channel:
        bb = pb_grpc.BlackboardStub(channel)
        await bb.CreateConversation(pb.CreateConversationRequest(id=conv))
        recorder = Recorder(bb, pb.SubscribeRequest(conversation_id=conv, start_revision=1))
        reading = asyncio.create_task(recorder.read(until=lambda r: len(r.events) >= 3))
        await bb.Put(pb.PutRequest(conversation_id=conv, key="a", value=pb.Value(data=b"1")))
        request = pb.PutRequest(
            conversation_id=conv, key="b", value=pb.Value(data=b"2"), ttl_ms=50, request_id="r1"
        )
        await bb.Put(request)
        assert (await bb.Put(request)).replayed
        async with asyncio.timeout(30):
            await reading  # the third event is the TTL expiry of b
        assert recorder.revisions == [1, 2, 3]
        listed = await bb.ListConversations(pb.ListConversationsRequest(page_size=100))
        assert conv in [c.id for c in listed.conversations]
        got = await bb.Get(pb.GetRequest(conversation_id=conv, key="a"))
        assert got.entry.value.data == b"1"
        grant = pb.GrantRoleRequest(conversation_id=conv, subject="agent-x", role=pb.ROLE_READER)
        await bb.GrantRole(grant)
        grants = await bb.ListGrants(pb.ListGrantsRequest(conversation_id=conv))
        assert [g.subject for g in grants.grants] == ["agent-x"]
        revoke = pb.RevokeRoleRequest(conversation_id=conv, subject="agent-x")
        assert (await bb.RevokeRole(revoke)).revoked
        await bb.DeleteConversation(pb.DeleteConversationRequest(id=conv))


async def exercise_server(tmp_path: Path, *flags: str) -> None:
    """Starts the server with `flags`, runs `exercise` against it, stops it."""
    server = ServerProcess(tmp_path / "server", *flags).start()
    try:
        await exercise(server.address)
    finally:
        server.stop()


async def test_the_server_runs_as_the_documented_acl_user(
    secured: RedisServer, password_file: Path, tmp_path: Path
) -> None:
    await exercise_server(
        tmp_path,
        *("--redis-url", f"redis://blackboard@127.0.0.1:{secured.port}/0"),
        *("--redis-password-file", str(password_file), "--log-level", "debug"),
    )
    assert acl_log(secured.port) == ""
    log = (tmp_path / "server" / "server.log").read_text()
    assert "durability" in log and PASSWORD not in log


async def test_the_server_runs_as_the_documented_acl_user_on_a_cluster(tmp_path: Path) -> None:
    cluster = RedisClusterServers(tmp_path / "cluster", replicas=1, durable=True).start()
    try:
        for node in cluster.nodes:
            cli(node.port, *documented_acl(PASSWORD), password="")
        url = cluster.url.replace("://", f"://blackboard:{PASSWORD}@")
        await exercise_server(tmp_path, "--redis-url", url)
        assert all(cli(n.port, "ACL", "LOG", password="").strip() == "" for n in cluster.nodes)
        log = (tmp_path / "server" / "server.log").read_text()
        assert '"wait_replicas":1' in log  # durable, and every primary has a replica
        assert PASSWORD not in log
    finally:
        cluster.stop()


def test_a_wrong_password_is_refused_by_name_and_not_shown(
    secured: RedisServer, tmp_path: Path
) -> None:
    wrong = "not-" + PASSWORD
    result = start_fails(
        tmp_path, "--redis-url", f"redis://blackboard:{wrong}@127.0.0.1:{secured.port}/0"
    )
    assert "refused the credentials of user 'blackboard'" in result.stderr
    assert wrong not in result.stderr + result.stdout
    assert "blackboard:***@" in result.stderr
    assert stored_keys(secured.port) == ""


def test_no_password_for_a_redis_that_wants_one_is_refused(
    secured: RedisServer, tmp_path: Path
) -> None:
    result = start_fails(tmp_path, "--redis-url", secured.url)
    assert "blackboard-server: redis_url:" in result.stderr
    assert "password" in result.stderr.lower() or "auth" in result.stderr.lower()
    assert stored_keys(secured.port) == ""


def test_durable_mode_without_config_get_says_so_and_the_check_can_be_turned_off(
    secured: RedisServer, password_file: Path, tmp_path: Path
) -> None:
    cli(secured.port, "ACL", "SETUSER", "blackboard", "-config|get")
    flags = (
        *("--redis-url", f"redis://blackboard@127.0.0.1:{secured.port}/0"),
        *("--redis-password-file", str(password_file)),
    )
    result = start_fails(tmp_path, *flags)
    assert "CONFIG GET was refused" in result.stderr and "durability_check=off" in result.stderr
    assert stored_keys(secured.port) == ""
    server = ServerProcess(tmp_path / "server", *flags, "--durability-check", "off").start()
    server.stop()


def test_durable_mode_refuses_a_redis_without_fsync_always(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    result = start_fails(tmp_path, "--redis-url", redis_server.url)
    assert "appendonly no" in result.stderr and "durability=fast" in result.stderr
    server = ServerProcess(
        tmp_path / "server", "--redis-url", redis_server.url, "--durability", "fast"
    ).start()
    server.stop()


def test_a_plain_url_to_a_cluster_node_names_the_cluster_form(
    redis_cluster: RedisClusterServers, tmp_path: Path
) -> None:
    node = redis_cluster.nodes[0]
    result = start_fails(
        tmp_path, "--redis-url", f"redis://127.0.0.1:{node.port}/0", "--durability", "fast"
    )
    assert "is a cluster node; use redis+cluster://" in result.stderr


# --- TLS ----------------------------------------------------------------------


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, int, dict[str, Path]]]:
    """A durable Redis on TLS only, requiring client certificates from its CA."""
    ca = make_certificate(tmp_path, "ca")
    server_cert, server_key = make_certificate(tmp_path, "redis", ca)
    client_cert, client_key = make_certificate(tmp_path, "client", ca)
    other_ca, _ = make_certificate(tmp_path, "other-ca")
    port = free_port()
    tls = (
        *("--tls-port", str(port), "--tls-cert-file", str(server_cert)),
        *("--tls-key-file", str(server_key), "--tls-ca-cert-file", str(ca[0])),
        *("--tls-auth-clients", "yes"),
    )
    server = RedisServer(tmp_path / "redis", durable=True, extra=tls).start()
    files = {"ca": ca[0], "cert": client_cert, "key": client_key, "other-ca": other_ca}
    yield server, port, files
    server.stop()


async def test_tls_with_a_client_certificate(
    tls_redis: tuple[RedisServer, int, dict[str, Path]], tmp_path: Path
) -> None:
    _, port, files = tls_redis
    await exercise_server(
        tmp_path,
        *("--redis-url", f"rediss://127.0.0.1:{port}/0"),
        *("--redis-tls-ca-file", str(files["ca"])),
        *("--redis-tls-cert-file", str(files["cert"]), "--redis-tls-key-file", str(files["key"])),
    )


def test_tls_without_the_client_certificate_or_with_the_wrong_ca_fails_to_start(
    tls_redis: tuple[RedisServer, int, dict[str, Path]], tmp_path: Path
) -> None:
    _, port, files = tls_redis
    url = f"rediss://127.0.0.1:{port}/0"
    no_cert = start_fails(tmp_path, "--redis-url", url, "--redis-tls-ca-file", str(files["ca"]))
    assert "cannot start: redis is unavailable" in no_cert.stderr
    wrong_ca = start_fails(
        tmp_path,
        *("--redis-url", url, "--redis-tls-ca-file", str(files["other-ca"])),
        *("--redis-tls-cert-file", str(files["cert"]), "--redis-tls-key-file", str(files["key"])),
    )
    assert "certificate verify failed" in wrong_ca.stderr.lower()
    plain = start_fails(
        tmp_path, "--redis-url", f"redis://127.0.0.1:{port}/0", "--redis-tls-ca-file", "x"
    )
    assert "use rediss://" in plain.stderr


async def test_tls_on_a_cluster(tmp_path: Path) -> None:
    """Every node over TLS only as far as the server sees: the slot map's ports are TLS ports."""
    ca = make_certificate(tmp_path, "ca")
    cluster = RedisClusterServers(
        tmp_path / "cluster", tls=(ca[0], *make_certificate(tmp_path, "redis", ca))
    ).start()
    try:
        await exercise_server(
            tmp_path,
            *("--redis-url", cluster.tls_url, "--redis-tls-ca-file", str(ca[0])),
            *("--durability", "fast"),
        )
    finally:
        cluster.stop()
