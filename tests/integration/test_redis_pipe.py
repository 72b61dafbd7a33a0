"""The pipelined script connection against a real redis-server (on uvloop, as in production).

Tests that stop, pause or restart Redis start their own redis-server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from blackboard_server.adapters.redis_pipe import Endpoint, Script, ScriptPipe
from blackboard_server.domain.errors import BackendUnavailable
from tests.servers import RedisServer, free_port, require

TIMEOUT_S = 0.5
ECHO = Script.of("echo", "return {KEYS[1], ARGV[1]}")
# Counts its runs, so a test can tell a call that ran twice from one that ran once.
COUNT = Script.of("count", "return redis.call('INCR', KEYS[1])")
FAIL = Script.of("fail", "return redis.error_reply('BOOM ' .. ARGV[1])")
SLOW = Script.of(
    "slow", "local t = redis.call('TIME') repeat until redis.call('TIME')[1] - t[1] > 1"
)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        os.kill(server.proc.pid, signal.SIGCONT)
    server.stop()


@pytest.fixture
async def pipe(redis_server: RedisServer) -> AsyncIterator[ScriptPipe]:
    async with ScriptPipe(Endpoint.from_url(redis_server.url), timeout_s=TIMEOUT_S) as p:
        yield p


@pytest.fixture
async def own_pipe(own_redis: RedisServer) -> AsyncIterator[ScriptPipe]:
    async with ScriptPipe(Endpoint.from_url(own_redis.url), timeout_s=TIMEOUT_S) as p:
        yield p


def unique() -> str:
    return f"pipe-test:{uuid.uuid4().hex}"


async def pipe_connections(url: str, expected: int) -> None:
    """Waits for Redis to count `expected` pipe connections (it notices closes a little late)."""
    async with Redis.from_url(url) as admin, asyncio.timeout(5):
        while True:
            names = [c["name"] for c in await admin.client_list()]
            if names.count("blackboard-pipe") == expected:
                return
            await asyncio.sleep(0.02)


async def timed(call: Awaitable[object]) -> tuple[object, float]:
    started = time.monotonic()
    try:
        return await call, time.monotonic() - started
    except Exception as exc:
        return exc, time.monotonic() - started


async def test_concurrent_calls_share_one_connection_and_get_their_own_replies(
    own_redis: RedisServer, own_pipe: ScriptPipe
) -> None:
    replies = await asyncio.gather(*(own_pipe.evalsha(ECHO, [f"k{i}"], i) for i in range(500)))
    assert replies == [[f"k{i}".encode(), str(i).encode()] for i in range(500)]
    await pipe_connections(own_redis.url, 1)


async def test_an_error_reply_fails_its_own_call_only(pipe: ScriptPipe) -> None:
    calls = [pipe.evalsha(FAIL if i % 3 == 0 else ECHO, ["k"], i) for i in range(30)]
    replies = await asyncio.gather(*calls, return_exceptions=True)
    for i, reply in enumerate(replies):
        if i % 3 == 0:
            assert isinstance(reply, ResponseError)
            assert str(reply) == f"BOOM {i}"
            assert reply.status_code == "BOOM"
        else:
            assert reply == [b"k", str(i).encode()]


async def test_flushed_scripts_are_loaded_again_and_run_once(
    redis_server: RedisServer, pipe: ScriptPipe
) -> None:
    key = unique()
    assert await pipe.evalsha(COUNT, [key]) == 1
    async with Redis.from_url(redis_server.url) as admin:
        await admin.script_flush()
    counts = await asyncio.gather(*(pipe.evalsha(COUNT, [key]) for _ in range(50)))
    assert sorted(counts) == list(range(2, 52))  # NOSCRIPT means not run: no call ran twice


async def test_a_cancelled_call_leaves_the_replies_in_step(pipe: ScriptPipe) -> None:
    cancelled = asyncio.ensure_future(pipe.evalsha(ECHO, ["a"], "cancelled"))
    following = asyncio.ensure_future(pipe.evalsha(ECHO, ["b"], "following"))
    await asyncio.sleep(0)
    cancelled.cancel()
    assert await following == [b"b", b"following"]
    assert await pipe.evalsha(ECHO, ["c"], "later") == [b"c", b"later"]


async def test_a_paused_redis_fails_every_waiting_call_within_the_timeout(
    own_redis: RedisServer, own_pipe: ScriptPipe
) -> None:
    assert own_redis.proc is not None
    key = unique()
    await own_pipe.evalsha(COUNT, [key])
    os.kill(own_redis.proc.pid, signal.SIGSTOP)
    try:
        first = [asyncio.ensure_future(own_pipe.evalsha(COUNT, [key])) for _ in range(20)]
        await asyncio.sleep(TIMEOUT_S / 2)
        later = [asyncio.ensure_future(own_pipe.evalsha(COUNT, [key])) for _ in range(20)]
        async with asyncio.timeout(5):
            outcomes = await asyncio.gather(*(timed(c) for c in first + later))
    finally:
        os.kill(own_redis.proc.pid, signal.SIGCONT)
    for error, took in outcomes:
        assert isinstance(error, BackendUnavailable), error
        assert took < TIMEOUT_S + 0.2
    # A new connection; the calls cut off may or may not have run, and none ran twice.
    count = await own_pipe.evalsha(COUNT, [key])
    assert 2 <= count <= 42
    await pipe_connections(own_redis.url, 1)


async def test_a_script_running_past_the_timeout_fails_the_calls_behind_it(
    own_redis: RedisServer, own_pipe: ScriptPipe
) -> None:
    slow = asyncio.ensure_future(timed(own_pipe.evalsha(SLOW, [])))
    behind = asyncio.ensure_future(timed(own_pipe.evalsha(ECHO, ["k"], "x")))
    for error, took in (await slow, await behind):
        assert isinstance(error, BackendUnavailable)
        assert took < TIMEOUT_S + 0.2
    async with asyncio.timeout(5):
        while True:  # Redis answers nothing until the script ends
            try:
                assert await own_pipe.evalsha(ECHO, ["k"], "y") == [b"k", b"y"]
                break
            except BackendUnavailable:
                await asyncio.sleep(0.05)


async def test_a_killed_redis_fails_calls_at_once_and_a_restarted_one_serves_again(
    own_redis: RedisServer, own_pipe: ScriptPipe
) -> None:
    key = unique()
    await own_pipe.evalsha(COUNT, [key])
    own_redis.kill()
    for _ in range(3):
        error, took = await timed(own_pipe.evalsha(COUNT, [key]))
        assert isinstance(error, BackendUnavailable), error
        assert took < TIMEOUT_S
    own_redis.start()  # same port, no data, no scripts
    assert await own_pipe.evalsha(COUNT, [key]) == 1


async def test_waiting_calls_fail_when_the_connection_drops(
    own_redis: RedisServer, own_pipe: ScriptPipe
) -> None:
    slow = asyncio.ensure_future(timed(own_pipe.evalsha(SLOW, [])))
    behind = asyncio.ensure_future(timed(own_pipe.evalsha(ECHO, ["k"], "x")))
    await asyncio.sleep(0.1)
    own_redis.kill()
    for error, took in (await slow, await behind):
        assert isinstance(error, BackendUnavailable)
        assert took < 0.4


async def test_nothing_listening_is_unavailable(tmp_path: Path) -> None:
    url = RedisServer(tmp_path).url  # a free port, never started
    async with ScriptPipe(Endpoint.from_url(url), timeout_s=TIMEOUT_S) as pipe:
        with pytest.raises(BackendUnavailable):
            await pipe.evalsha(ECHO, ["k"], "x")


async def test_a_closed_pipe_is_unavailable(pipe: ScriptPipe) -> None:
    await pipe.evalsha(ECHO, ["k"], "x")
    await pipe.aclose()
    with pytest.raises(BackendUnavailable):
        await pipe.evalsha(ECHO, ["k"], "x")


async def test_it_authenticates_and_selects_the_database(own_redis: RedisServer) -> None:
    async with Redis.from_url(own_redis.url) as admin:
        await admin.acl_setuser(
            "bb", enabled=True, passwords=["+s3cret"], keys=["*"], categories=["+@all"]
        )
        url = f"redis://bb:s3cret@127.0.0.1:{own_redis.port}/3"
        async with ScriptPipe(Endpoint.from_url(url), timeout_s=TIMEOUT_S) as pipe:
            assert await pipe.evalsha(COUNT, ["counted"]) == 1
        assert await admin.get("counted") is None
        async with Redis.from_url(own_redis.url.replace("/0", "/3")) as db3:
            assert await db3.get("counted") == b"1"
        wrong = f"redis://bb:wrong@127.0.0.1:{own_redis.port}/3"
        async with ScriptPipe(Endpoint.from_url(wrong), timeout_s=TIMEOUT_S) as pipe:
            with pytest.raises(BackendUnavailable):
                await pipe.evalsha(COUNT, ["counted"])


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, str]]:
    """A redis-server also listening with TLS, and the URL to reach it that way."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *(require("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    tls = ("--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key))
    trust = ("--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no")
    server = RedisServer(tmp_path / "redis", extra=tls + trust).start()
    yield server, f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={cert}"
    server.stop()


async def test_it_speaks_tls(tls_redis: tuple[RedisServer, str]) -> None:
    _, url = tls_redis
    async with ScriptPipe(Endpoint.from_url(url), timeout_s=TIMEOUT_S) as pipe:
        assert await pipe.evalsha(ECHO, ["k"], "sealed") == [b"k", b"sealed"]


async def test_it_connects_over_a_unix_socket(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    server = RedisServer(tmp_path / "redis", extra=("--unixsocket", str(socket_path))).start()
    try:
        url = f"unix://{socket_path}?db=2"
        async with ScriptPipe(Endpoint.from_url(url), timeout_s=TIMEOUT_S) as pipe:
            assert await pipe.evalsha(COUNT, ["counted"]) == 1
        async with Redis.from_url(url) as db2, Redis.from_url(f"unix://{socket_path}") as db0:
            assert (await db2.get("counted"), await db0.get("counted")) == (b"1", None)
    finally:
        server.stop()
