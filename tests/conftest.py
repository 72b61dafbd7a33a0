"""Fixtures that start real backends. Each test uses its own conversation ids,
so one backend process serves a whole session."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.servers import (
    EtcdCluster,
    RedisClusterServers,
    RedisPair,
    RedisServer,
    ServerProcess,
    start_replicas,
)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(Path(tmp_path_factory.mktemp("redis"))).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisPair]:
    """A durable primary with one replica: for confirmed reads and writes (WAIT)."""
    pair = RedisPair(Path(tmp_path_factory.mktemp("redis-pair"))).start()
    yield pair
    pair.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """Three primaries on loopback, no replicas: for tests that do not kill nodes."""
    cluster = RedisClusterServers(Path(tmp_path_factory.mktemp("redis-cluster"))).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(Path(tmp_path_factory.mktemp("etcd")), size=1).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A fresh 3-member cluster for a test that kills members."""
    cluster = EtcdCluster(tmp_path / "etcd3", size=3).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def make_replicas(
    redis_server: RedisServer, etcd: EtcdCluster, tmp_path: Path
) -> Iterator[Callable[..., list[ServerProcess]]]:
    """Starts server replicas on the session's Redis and etcd; stops them after the test."""
    started: list[ServerProcess] = []

    def make(count: int, *extra: str, metrics: bool = False) -> list[ServerProcess]:
        servers = start_replicas(
            tmp_path / f"set{len(started)}", redis_server, etcd, count, *extra, metrics=metrics
        )
        started.extend(servers)
        return servers

    yield make
    for server in started:
        server.stop()
