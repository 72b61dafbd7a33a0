"""The real server, started with exactly the environment a prod pod gets (the image's
BB_* defaults under the overlay's ConfigMap), only the addresses pointed at local
processes and the Secret files made here: it must come up SERVING on the health
port, serve TLS with JWT authentication, use Redis and etcd, and drain on SIGTERM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import trustme
from cryptography.hazmat.primitives.asymmetric import rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from tests.deploy.dockerfile import env_of, stages
from tests.deploy.manifests import ROOT, Doc, redis_config, server_settings
from tests.servers import EtcdCluster, RedisServer, free_port, require, wait_for


def pod_environment(docs: list[Doc]) -> dict[str, str]:
    """What `env` shows in the server container: image ENV, then envFrom on top."""
    _, found = stages((ROOT / "deploy" / "docker" / "Dockerfile").read_text())
    image = {k: v for k, v in env_of(found[-1]).items() if k.startswith("BB_")}
    return {**image, **server_settings(docs)}


def localised(
    env: dict[str, str], redis: RedisServer, etcd: EtcdCluster, files: dict[str, Path]
) -> dict[str, str]:
    """The same settings with every address and file moved to this machine; nothing else."""
    out = dict(env)
    for key, path in files.items():
        assert env[key].rpartition("/")[2] == path.name, "the Secret's key names the file"
        out[key] = str(path)
    out["BB_REDIS_URL"] = redis.url
    endpoints = env["BB_ETCD_ENDPOINTS"].split(",")
    assert len(endpoints) == len(etcd.endpoints)
    out["BB_ETCD_ENDPOINTS"] = ",".join(etcd.endpoints)
    for key in ("BB_LISTEN", "BB_HEALTH_LISTEN"):
        host = env[key].rpartition(":")[0]
        out[key] = f"{host}:{free_port()}"
    out["BB_METRICS_PORT"] = str(free_port())
    assert set(out) == set(env)
    return out


@pytest.fixture
def redis_prod(prod: list[Doc], tmp_path: Path) -> Iterator[RedisServer]:
    """redis-server with the prod overlay's redis.conf (address and directory moved here)."""
    _, text, _ = redis_config(prod)
    workdir = tmp_path / "redis"
    workdir.mkdir()
    # Redis changes to `dir` while it reads the file, before any flag can override it.
    lines = [f"dir {workdir}" if line.startswith("dir ") else line for line in text.splitlines()]
    assert f"dir {workdir}" in lines
    path = tmp_path / "redis.conf"
    path.write_text("\n".join(lines) + "\n")
    server = RedisServer(workdir, durable=True, config_file=path).start()
    yield server
    server.stop()


@pytest.fixture
def etcd3(tmp_path: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path / "etcd", size=3).start()
    yield cluster
    cluster.stop()


@dataclass
class Credentials:
    ca: trustme.CA
    files: dict[str, Path]
    private_key: Any

    def token(self, env: dict[str, str], **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": env["BB_JWT_ISSUER"],
            "aud": env["BB_JWT_AUDIENCE"],
            "sub": "planner",
            "tenant": "acme",
            "roles": ["admin"],
            "iat": now,
            "exp": now + 300,
            **claims,
        }
        return str(jwt.encode(body, self.private_key, algorithm="RS256", headers={"kid": "k1"}))


@pytest.fixture
def credentials(tmp_path: Path) -> Credentials:
    """What the Secrets blackboard-tls and blackboard-jwt would hold."""
    ca = trustme.CA()
    tls = tmp_path / "tls"
    tls.mkdir()
    server_cert = ca.issue_cert("localhost", "127.0.0.1", "blackboard")
    server_cert.cert_chain_pems[0].write_to_path(str(tls / "tls.crt"))
    server_cert.private_key_pem.write_to_path(str(tls / "tls.key"))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    keys = tmp_path / "jwt" / "jwks.json"
    keys.parent.mkdir()
    keys.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]}))
    files = {
        "BB_TLS_CERT_FILE": tls / "tls.crt",
        "BB_TLS_KEY_FILE": tls / "tls.key",
        "BB_JWT_KEYS_FILE": keys,
    }
    return Credentials(ca, files, key)


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return -1
        return int(reply.status)


def local(address: str) -> str:
    return "127.0.0.1:" + address.rpartition(":")[2]


@pytest.mark.slow
def test_server_serves_with_the_prod_environment(
    prod: list[Doc],
    redis_prod: RedisServer,
    etcd3: EtcdCluster,
    credentials: Credentials,
    tmp_path: Path,
) -> None:
    env = localised(pod_environment(prod), redis_prod, etcd3, credentials.files)
    process_env = {k: v for k, v in os.environ.items() if not k.startswith("BB_")}
    server_log = open(tmp_path / "server.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "blackboard-server")],
        env={**process_env, **env},
        stdout=server_log,
        stderr=subprocess.STDOUT,
    )
    server_log.close()
    try:
        health_address = local(env["BB_HEALTH_LISTEN"])

        def serving() -> bool:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            return health(health_address) == health_pb2.HealthCheckResponse.SERVING

        wait_for(serving, 60, "the server with the prod environment")
        conversation = f"t-{uuid.uuid4().hex[:12]}"
        tls = grpc.ssl_channel_credentials(credentials.ca.cert_pem.bytes())
        target = "localhost:" + env["BB_LISTEN"].rpartition(":")[2]
        request = pb.CreateConversationRequest(id=conversation)
        bearer = [("authorization", "Bearer " + credentials.token(env))]
        with grpc.secure_channel(target, tls) as channel:
            stub = pb_grpc.BlackboardStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.CreateConversation(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            forged = [("authorization", "Bearer " + credentials.token(env, aud="other"))]
            with pytest.raises(grpc.RpcError) as refused:
                stub.CreateConversation(request, timeout=10, metadata=forged)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as missing:
                stub.GetConversation(
                    pb.GetConversationRequest(id=conversation), timeout=10, metadata=bearer
                )
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            stub.CreateConversation(request, timeout=10, metadata=bearer)
            got = stub.GetConversation(
                pb.GetConversationRequest(id=conversation), timeout=10, metadata=bearer
            )
            assert got.id == conversation
        # Plaintext is not served on the gRPC port.
        assert health(local(env["BB_LISTEN"])) == -1
        # It wrote to this Redis and registered with this etcd.
        import redis

        client = redis.Redis.from_url(redis_prod.url, decode_responses=True)
        assert client.dbsize() > 0
        # ...a Redis running the overlay's redis.conf.
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        keys = subprocess.run(
            [
                require("etcdctl"),
                "--endpoints",
                etcd3.endpoints[0],
                "get",
                "--prefix",
                "/",
                "--keys-only",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert keys.stdout.strip()
        metrics_url = f"http://127.0.0.1:{env['BB_METRICS_PORT']}/metrics"
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            assert b"grpc_server_handled_total" in response.read()
        server.terminate()
        assert server.wait(timeout=60) == 0, (tmp_path / "server.log").read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
