"""`blackboard-server --workers 2`: two processes serve one port as two replicas;
a worker killed -9 is started again while the other serves; SIGTERM to the
parent drains both and it exits 0."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from blackboard_client import RetryPolicy, connect
from tests.servers import EtcdCluster, RedisServer, ServerProcess, wait_for

RETRY = RetryPolicy(attempts=10, max_backoff=1.0)


def started_workers(server: ServerProcess) -> list[int]:
    """The pids of the workers the parent started, from its log."""
    pids = []
    for line in (server.workdir / "server.log").read_text().splitlines():
        if line.startswith("{") and '"worker started"' in line:
            pids.append(json.loads(line)["pid"])
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by the parent) is not alive either.
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.fixture
def workers(
    redis_server: RedisServer, etcd: EtcdCluster, tmp_path: Path
) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path,
        "--workers",
        "2",
        "--redis-url",
        redis_server.url,
        "--durability",
        "fast",
        "--etcd-endpoints",
        ",".join(etcd.endpoints),
        "--etcd-prefix",
        f"/bb-{uuid.uuid4().hex[:8]}",
        "--shutdown-grace-s",
        "3",
    ).start()
    wait_for(lambda: len(started_workers(server)) == 2, 20, "two workers")
    yield server
    server.stop()


@pytest.mark.timeout(90)
async def test_two_workers_share_the_port_and_survive_a_crash(workers: ServerProcess) -> None:
    first = started_workers(workers)
    assert all(alive(pid) for pid in first) and workers.proc is not None
    assert workers.proc.pid not in first
    conv = f"workers-{uuid.uuid4().hex[:8]}"
    async with connect(workers.address, retry=RETRY) as client:
        await client.create_conversation(conv)
        async with client.session(conv, ttl=5.0) as session:
            for i in range(20):
                await client.put(conv, f"k{i}", "v", session=session)
            os.kill(first[0], signal.SIGKILL)
            # The other worker serves meanwhile (the client reconnects to the port),
            # and the session, kept in etcd, lives on.
            for i in range(20, 40):
                await client.put(conv, f"k{i}", "v", session=session)
            wait_for(lambda: len(started_workers(workers)) == 3, 20, "a replacement worker")
            assert not session.lost.is_set()
            page = await client.range(conv, "k")
            assert len(page.entries) == 40
        # Closing the session (through whichever worker) removed its entries.
        assert (await client.range(conv, "k")).entries == ()
    replacement = started_workers(workers)[-1]
    assert alive(replacement) and alive(first[1])

    workers.proc.send_signal(signal.SIGTERM)
    assert workers.proc.wait(15) == 0
    assert not alive(replacement) and not alive(first[1])


def test_several_workers_refuse_embedded_mode(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="exited"):
        ServerProcess(tmp_path, "--workers", "2").start()
    assert "embedded mode keeps state in process memory" in (tmp_path / "server.log").read_text()
