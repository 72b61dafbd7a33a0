"""The real server, started with exactly the environment a prod pod gets (the image's
BB_* defaults under the overlay's ConfigMap), only the addresses pointed at local
processes: it must come up SERVING, use Redis and etcd, and drain on SIGTERM."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
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


def localised(env: dict[str, str], redis: RedisServer, etcd: EtcdCluster) -> dict[str, str]:
    """The same settings with every address moved to this machine; nothing else changes."""
    out = dict(env)
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
    prod: list[Doc], redis_prod: RedisServer, etcd3: EtcdCluster, tmp_path: Path
) -> None:
    env = localised(pod_environment(prod), redis_prod, etcd3)
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
        with grpc.insecure_channel(local(env["BB_LISTEN"])) as channel:
            stub = pb_grpc.BlackboardStub(channel)
            stub.CreateConversation(pb.CreateConversationRequest(id=conversation), timeout=10)
            got = stub.GetConversation(pb.GetConversationRequest(id=conversation), timeout=10)
            assert got.id == conversation
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
