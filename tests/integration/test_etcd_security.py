"""The server against an etcd with authentication on, and against one that speaks only TLS
with client certificates: it works with the right credentials and refuses to start,
with a one-line reason and no traceback, with wrong or missing ones."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import trustme

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from blackboard_server.adapters.etcd import EtcdClient, EtcdSecurity
from blackboard_server.app import serve
from blackboard_server.config import Settings, SettingsError
from tests.servers import EtcdCluster, EtcdTls, free_port

PASSWORD = "s3cret-bb"


@pytest.fixture(scope="module")
def auth_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd-auth"), size=1).start()
    cluster.members[0].enable_auth("root-pw", "blackboard", "/bb/", "blackboard", PASSWORD)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    files = {
        name: folder / f"{name}.pem"
        for name in ("ca", "server", "server-key", "client", "client-key", "other-ca")
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(files["server"]))
    server.private_key_pem.write_to_path(str(files["server-key"]))
    client = ca.issue_cert("blackboard-server")
    client.cert_chain_pems[0].write_to_path(str(files["client"]))
    client.private_key_pem.write_to_path(str(files["client-key"]))
    trustme.CA().cert_pem.write_to_path(str(files["other-ca"]))
    return files


@pytest.fixture(scope="module")
def tls_etcd(
    tmp_path_factory: pytest.TempPathFactory, tls_files: dict[str, Path]
) -> Iterator[EtcdCluster]:
    # etcdctl (the fixture's health check) uses the client certificate as well.
    tls = EtcdTls(tls_files["ca"], tls_files["server"], tls_files["server-key"])
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd-tls"), size=1, tls=tls).start()
    yield cluster
    cluster.stop()


def settings_for(cluster: EtcdCluster, **overrides: object) -> Settings:
    base = Settings(listen="127.0.0.1:0", uvloop=False, etcd_endpoints=cluster.endpoints[0])
    return base.replace(**overrides)


async def exercise(settings: Settings) -> None:
    """A conversation, a session and a lock: the calls that need etcd."""
    async with serve(settings) as running, grpc.aio.insecure_channel(running.address) as channel:
        bb, coord = pb_grpc.BlackboardStub(channel), pb_grpc.CoordinationStub(channel)
        conv = f"sec-{uuid.uuid4().hex[:8]}"
        await bb.CreateConversation(pb.CreateConversationRequest(id=conv))
        session = await coord.OpenSession(pb.OpenSessionRequest(conversation_id=conv))
        lock = await coord.AcquireLock(
            pb.AcquireLockRequest(conversation_id=conv, name="l", session_id=session.session_id)
        )
        assert lock.token > 0
        listed = await coord.ListSessions(pb.ListSessionsRequest(conversation_id=conv))
        assert [s.session_id for s in listed.sessions] == [session.session_id]


def password_file(tmp_path: Path, password: str) -> str:
    path = tmp_path / "etcd-password"
    path.write_text(password + "\n")  # as `kubectl create secret --from-file` may leave it
    return str(path)


async def test_the_server_works_with_the_right_user(auth_etcd: EtcdCluster, tmp_path: Path) -> None:
    await exercise(
        settings_for(
            auth_etcd,
            etcd_username="blackboard",
            etcd_password_file=password_file(tmp_path, PASSWORD),
        )
    )
    # Everything it wrote is under the prefix its role may write.
    keys = auth_etcd.members[0].etcdctl("get", "", "--prefix", "--keys-only", user="root:root-pw")
    assert keys.returncode == 0
    written = [k for k in keys.stdout.split() if k]
    assert written and all(k.startswith("/bb/") for k in written)


@pytest.mark.parametrize(
    ("credentials", "reason"),
    [
        ({"etcd_username": "blackboard", "etcd_password": "wrong"}, "authentication failed"),
        ({"etcd_username": "nobody", "etcd_password": PASSWORD}, "authentication failed"),
        ({}, "user name is empty"),
        # A real user whose role does not cover the prefix.
        (
            {"etcd_username": "blackboard", "etcd_password": PASSWORD, "etcd_prefix": "/other"},
            "permission denied",
        ),
    ],
)
async def test_wrong_or_missing_credentials_stop_the_start(
    auth_etcd: EtcdCluster, credentials: dict[str, str], reason: str
) -> None:
    with pytest.raises(SettingsError, match=reason) as caught:
        async with serve(settings_for(auth_etcd, **credentials)):
            pass
    assert PASSWORD not in str(caught.value)


def test_the_command_says_why_it_cannot_start(auth_etcd: EtcdCluster, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "blackboard_server",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--etcd-endpoints",
            auth_etcd.endpoints[0],
            "--etcd-username",
            "blackboard",
            "--etcd-password-file",
            password_file(tmp_path, "not-the-password"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("blackboard-server: etcd refused the server (user 'blackboard')")
    assert "authentication failed" in last and "not-the-password" not in result.stderr


async def test_a_token_etcd_forgot_is_replaced(tmp_path: Path) -> None:
    """Simple tokens live in etcd's memory: after a restart every old token is invalid."""
    cluster = EtcdCluster(tmp_path / "etcd", size=1).start()
    try:
        member = cluster.members[0]
        member.enable_auth("root-pw", "blackboard", "/bb/", "blackboard", PASSWORD)
        security = EtcdSecurity(username="blackboard", password=PASSWORD)
        async with EtcdClient(cluster.endpoints, timeout_s=10, security=security) as client:
            await client.put("/bb/a", b"1")
            member.stop()
            cluster.restart(member)
            kv = await client.get("/bb/a")  # rejected once, authenticated again, answered
            assert kv is not None and kv.value == b"1"
            await client.put("/bb/b", b"2")
    finally:
        cluster.stop()


async def test_tls_with_a_client_certificate(
    tls_etcd: EtcdCluster, tls_files: dict[str, Path]
) -> None:
    await exercise(
        settings_for(
            tls_etcd,
            etcd_tls_ca_file=str(tls_files["ca"]),
            etcd_tls_cert_file=str(tls_files["client"]),
            etcd_tls_key_file=str(tls_files["client-key"]),
        )
    )


@pytest.mark.parametrize(
    "files",
    [
        {"etcd_tls_ca_file": "ca"},  # no client certificate
        {
            "etcd_tls_ca_file": "other-ca",
            "etcd_tls_cert_file": "client",
            "etcd_tls_key_file": "client-key",
        },
    ],
    ids=["no-client-certificate", "wrong-ca"],
)
async def test_tls_refusals_stop_the_start(
    tls_etcd: EtcdCluster, tls_files: dict[str, Path], files: dict[str, str]
) -> None:
    paths = {name: str(tls_files[file]) for name, file in files.items()}
    with pytest.raises(SettingsError, match="etcd refused the server"):
        async with serve(settings_for(tls_etcd, etcd_timeout_s=2.0, **paths)):
            pass


async def test_an_https_endpoint_without_tls_settings_is_refused(tls_etcd: EtcdCluster) -> None:
    endpoint = "https://" + tls_etcd.endpoints[0]
    with pytest.raises(SettingsError, match="TLS endpoint"):
        async with serve(settings_for(tls_etcd, etcd_endpoints=endpoint)):
            pass
