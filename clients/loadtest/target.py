"""What the load goes to: a server this harness starts (embedded, or on Redis and
etcd it is given or starts itself in a temp dir), or an address it is given.

Processes started here are stopped here; their logs stay in the work dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

AGENT_HEADER = "x-agent-id"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed (make servers installs it)")
    return found


def version(name: str) -> str:
    """The first line of `name --version`, e.g. "Redis server v=7.0.15 ..."."""
    out = subprocess.run([binary(name), "--version"], capture_output=True, text=True, check=False)
    return " ".join((out.stdout.splitlines() or [name])[0].split())


class Process:
    """A child process with its output in `<workdir>/<name>.log`."""

    def __init__(self, name: str, argv: Sequence[str], workdir: Path) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(list(argv), stdout=log, stderr=log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def until(self, ready: object, within_s: float) -> None:
        """Polls `ready()` (a sync callable, run in a thread) until true, or fails."""
        deadline = time.monotonic() + within_s
        while not await asyncio.to_thread(ready):  # type: ignore[arg-type]
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {within_s:g} s")
            await asyncio.sleep(0.05)

    def stop(self, grace_s: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _redis_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _etcd_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5) as reply:
            return b'"true"' in reply.read()
    except OSError:
        return False


async def start_redis(workdir: Path, *, durable: bool = False) -> tuple[Process, str]:
    port = free_port()
    fsync = (
        ["--appendonly", "yes", "--appendfsync", "always"] if durable else ["--appendonly", "no"]
    )
    argv = [binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--dir", str(workdir), "--save", "", "--loglevel", "warning", *fsync]
    proc = Process("redis", argv, workdir)
    await proc.until(lambda: _redis_ready(port), 15)
    return proc, f"redis://127.0.0.1:{port}/0"


async def start_etcd(workdir: Path) -> tuple[Process, str]:
    """One etcd member with its data on disk in `workdir`."""
    client, peer = free_port(), free_port()
    curl, purl = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    argv = [binary("etcd"), "--name", "lt", "--data-dir", str(workdir / "etcd-data")]
    argv += ["--listen-client-urls", curl, "--advertise-client-urls", curl]
    argv += ["--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl]
    argv += ["--initial-cluster", f"lt={purl}", "--log-level", "error"]
    proc = Process("etcd", argv, workdir)
    await proc.until(lambda: _etcd_ready(client), 30)
    return proc, f"127.0.0.1:{client}"


async def start_server(
    workdir: Path, name: str, flags: Sequence[str], *, module: str = "blackboard_server"
) -> tuple[Process, str]:
    """A gRPC server process (`python -m module --listen ...`), once it is SERVING."""
    address = f"127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", module, "--listen", address, *flags]
    proc = Process(name, argv, workdir)
    await proc.until(lambda: _serving(address), 60)
    return proc, address


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        # Not HealthStub: its type stubs do not declare Check.
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            reply = check(health_pb2.HealthCheckRequest(), timeout=0.5)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@dataclass
class Endpoint:
    """Where to send load, how to authenticate, and what runs locally."""

    address: str
    tls_ca: bytes | None = None
    tls: bool = False
    token: str = ""
    redis_url: str = ""
    etcd_endpoints: list[str] = field(default_factory=list)
    etcd_prefix: str = ""  # the server's --etcd-prefix, when started here
    tenant: str = "default"  # the server's --tenant: where its etcd keys are
    pids: dict[str, int] = field(default_factory=dict)  # local processes to meter
    description: str = ""
    processes: list[Process] = field(default_factory=list)

    def channel(self) -> grpc.aio.Channel:
        options = [("grpc.max_receive_message_length", 64 << 20)]
        if self.tls or self.tls_ca is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=self.tls_ca)
            return grpc.aio.secure_channel(self.address, creds, options=options)
        return grpc.aio.insecure_channel(self.address, options=options)

    def metadata(self, agent: str = "") -> tuple[tuple[str, str], ...]:
        headers: dict[str, str] = {}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        if agent:
            headers[AGENT_HEADER] = agent
        return tuple(headers.items())

    def server_died(self) -> str:
        dead = [p for p in self.processes if not p.alive()]
        return "\n".join(f"{p.name} exited:\n{p.log_tail()}" for p in dead)


@dataclass
class Plan:
    """How to get an `Endpoint`: the flags of bb-loadtest that say where to go."""

    address: str = ""  # given: a server already running
    backend: str = "embedded"  # started here: embedded | redis | redis-etcd
    redis_url: str = ""
    etcd_endpoints: list[str] = field(default_factory=list)
    redis_durable: bool = False
    tls_ca: str = ""
    tls: bool = False
    token: str = ""
    server_flags: list[str] = field(default_factory=list)
    server_pid: int = 0  # a local server given by address: meter its CPU and RSS
    workdir: Path = Path(".")


@contextlib.asynccontextmanager
async def endpoint(
    plan: Plan, extra_env: Mapping[str, str] | None = None
) -> AsyncIterator[Endpoint]:
    """Starts what `plan` asks for, yields where it is, stops it all on exit."""
    started: list[Process] = []
    ca = await asyncio.to_thread(Path(plan.tls_ca).read_bytes) if plan.tls_ca else None
    try:
        if plan.address:
            yield Endpoint(
                plan.address,
                tls_ca=ca,
                tls=plan.tls,
                token=plan.token,
                redis_url=plan.redis_url,
                etcd_endpoints=plan.etcd_endpoints,
                pids={"server": plan.server_pid} if plan.server_pid else {},
                description=f"a server at {plan.address}",
            )
            return
        redis_url, etcd = plan.redis_url, list(plan.etcd_endpoints)
        pids: dict[str, int] = {}
        durability: list[str] = []  # a Redis started here: the server's mode matches it
        if not redis_url and plan.backend in ("redis", "redis-etcd"):
            proc, redis_url = await start_redis(plan.workdir, durable=plan.redis_durable)
            started.append(proc)
            pids["redis"] = proc.pid
            durability = ["--durability", "durable" if plan.redis_durable else "fast"]
        if not etcd and plan.backend == "redis-etcd":
            proc, endpoint_ = await start_etcd(plan.workdir)
            started.append(proc)
            pids["etcd"] = proc.pid
            etcd = [endpoint_]
        prefix = f"/lt-{time.time_ns() % 10**9}"
        flags = ["--log-format", "json", *durability, *plan.server_flags]
        if redis_url:
            flags += ["--redis-url", redis_url]
        if etcd:
            flags += ["--etcd-endpoints", ",".join(etcd), "--etcd-prefix", prefix]
        server, address = await start_server(plan.workdir, "blackboard-server", flags)
        started.append(server)
        backend = ("Redis" if redis_url else "memory store") + (
            " + etcd" if etcd else " + memory coordinator"
        )
        yield Endpoint(
            address,
            redis_url=redis_url,
            etcd_endpoints=etcd,
            etcd_prefix=prefix if etcd else "",
            pids={"server": server.pid, **pids},
            description=f"blackboard-server started here on {backend}",
            processes=started,
        )
    finally:
        for proc in reversed(started):
            proc.stop()
