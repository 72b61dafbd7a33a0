"""Real redis-server and etcd processes on free loopback ports in temp dirs.

Nothing here talks to a server on a standard port: every process is started by
the test run and stopped by it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise TimeoutError(f"{what} not ready after {timeout}s")


def _stop(proc: subprocess.Popen[bytes] | None, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL: an etcd member without quorum can ignore SIGTERM."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise RuntimeError(f"{binary} is not installed: run 'make test', which installs it")
    return path


class RedisServer:
    """One redis-server. `durable` turns on AOF with appendfsync always."""

    def __init__(
        self,
        workdir: Path,
        *,
        durable: bool = False,
        port: int = 0,
        extra: tuple[str, ...] = (),
        config_file: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.durable = durable
        self.extra = extra
        self.config_file = config_file  # read first; the flags below override it
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            require("redis-server"),
            *([str(self.config_file)] if self.config_file else []),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--loglevel",
            "warning",
            "--logfile",
            str(self.workdir / "redis.log"),
        ]
        if self.durable:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        args += list(self.extra)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.ping, 10, f"redis-server on {self.port}")
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """kill -9: no chance to write anything more."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        _stop(self.proc)


@dataclass(frozen=True)
class EtcdTls:
    """Files of a TLS etcd: its certificate and key, and the CA clients are checked against."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    client_cert_auth: bool = True  # clients must present a certificate of the CA


class EtcdMember:
    def __init__(self, name: str, workdir: Path, tls: EtcdTls | None = None) -> None:
        self.name = name
        self.workdir = workdir
        self.tls = tls
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    def etcdctl(self, *args: str, user: str = "") -> subprocess.CompletedProcess[str]:
        """etcdctl against this member (as `user`, "name:password", if given)."""
        command = [require("etcdctl"), "--endpoints", self.url, "--command-timeout=3s"]
        if self.tls:
            command += ["--cacert", str(self.tls.ca_file)]
            command += ["--cert", str(self.tls.cert_file), "--key", str(self.tls.key_file)]
        if user:
            command += ["--user", user]
        return subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            env={**os.environ, "ETCDCTL_API": "3"},
            check=False,
            timeout=30,
        )

    def enable_auth(
        self, root_password: str, role: str, prefix: str, user: str, password: str
    ) -> None:
        """A root user, a user whose role may read and write `prefix` only, then auth on."""
        steps = [
            ("user", "add", f"root:{root_password}", "--interactive=false"),
            ("user", "grant-role", "root", "root"),
            ("role", "add", role),
            ("role", "grant-permission", role, "--prefix=true", "readwrite", prefix),
            ("user", "add", f"{user}:{password}", "--interactive=false"),
            ("user", "grant-role", user, role),
            ("auth", "enable"),
        ]
        for step in steps:
            result = self.etcdctl(*step)
            if result.returncode != 0:
                raise RuntimeError(f"etcdctl {' '.join(step[:2])}: {result.stderr}")

    def start(self, initial_cluster: str, state: str = "new") -> None:
        client = self.url
        args = [
            require("etcd"),
            "--name",
            self.name,
            "--data-dir",
            str(self.workdir / self.name),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            initial_cluster,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            f"bb-{self.workdir.name}",
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "250",
            "--log-level",
            "error",
        ]
        if self.tls:
            args += ["--cert-file", str(self.tls.cert_file), "--key-file", str(self.tls.key_file)]
            args += ["--trusted-ca-file", str(self.tls.ca_file)]
            if self.tls.client_cert_auth:
                args.append("--client-cert-auth")
        log = open(self.workdir / f"{self.name}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        log.close()

    def healthy(self) -> bool:
        if self.tls:
            return self.etcdctl("endpoint", "health").returncode == 0
        result = subprocess.run(
            [
                require("etcdctl"),
                "--endpoints",
                self.endpoint,
                "--command-timeout=1s",
                "endpoint",
                "health",
            ],
            capture_output=True,
            env={**os.environ, "ETCDCTL_API": "3"},
            check=False,
        )
        return result.returncode == 0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        _stop(self.proc)


class EtcdCluster:
    """One or three etcd members on loopback, with fast elections."""

    def __init__(self, workdir: Path, size: int = 1, tls: EtcdTls | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.members = [EtcdMember(f"m{i}", workdir, tls) for i in range(size)]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def start(self) -> EtcdCluster:
        for member in self.members:
            member.start(self.initial_cluster)
        wait_for(lambda: all(m.healthy() for m in self.members), 30, "etcd cluster")
        return self

    def leader(self) -> EtcdMember:
        for member in self.members:
            result = subprocess.run(
                [
                    require("etcdctl"),
                    "--endpoints",
                    member.endpoint,
                    "--command-timeout=1s",
                    "endpoint",
                    "status",
                    "--write-out=fields",
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "ETCDCTL_API": "3"},
                check=False,
            )
            fields = dict(
                line.split(" : ", 1) for line in result.stdout.splitlines() if " : " in line
            )
            if fields.get('"MemberID"') == fields.get('"Leader"') and result.returncode == 0:
                return member
        raise RuntimeError("no etcd leader")

    def restart(self, member: EtcdMember) -> None:
        member.start(self.initial_cluster, state="existing")

    def stop(self) -> None:
        for member in self.members:
            member.stop()


class ServerProcess:
    """`blackboard-server` in its own process, as it runs in production.

    `credentials`: the channel credentials of the health check that tells when it
    serves (grpc.ChannelCredentials), for a server with TLS on. `port`: a fixed
    port, kept across restarts; 0 picks a free one.
    """

    def __init__(
        self, workdir: Path, *args: str, credentials: object = None, port: int = 0
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = port or free_port()  # kept across restarts
        self.args = args
        self.credentials = credentials
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_port(self) -> int:
        """The port of /metrics, given as --metrics-port; 0 when off."""
        args = list(self.args)
        return int(args[args.index("--metrics-port") + 1]) if "--metrics-port" in args else 0

    def start(self) -> ServerProcess:
        import sys

        log = open(self.workdir / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "blackboard_server",
                "--listen",
                self.address,
                "--log-format",
                "json",
                *self.args,
            ],
            stdout=log,
            stderr=log,
        )
        log.close()
        wait_for(self.serving, 20, f"blackboard-server on {self.port}")
        return self

    def serving(self) -> bool:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"blackboard-server exited: see {self.workdir / 'server.log'}")
        if self.credentials is None:
            channel = grpc.insecure_channel(self.address)
        else:
            channel = grpc.secure_channel(self.address, self.credentials)  # type: ignore[arg-type]
        with channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=0.5
                )
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def stop(self) -> None:
        _stop(self.proc, grace=15)

    def kill(self) -> None:
        """kill -9: in-flight calls and open streams break, nothing is drained."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def terminate(self) -> None:
        """SIGTERM, without waiting: the server drains and exits by itself."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def rss_bytes(self) -> int:
        """The server process's resident memory, from /proc."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc status")


def start_replicas(
    tmp: Path, redis: RedisServer, etcd: EtcdCluster, count: int, *extra: str, metrics: bool = False
) -> list[ServerProcess]:
    """`count` server processes sharing one Redis and one etcd, as replicas do.

    With `metrics`, each serves /metrics on a port of its own (`metrics_port`).
    """
    prefix = f"/bb-{uuid.uuid4().hex[:8]}"
    common = (
        "--redis-url",
        redis.url,
        "--etcd-endpoints",
        ",".join(etcd.endpoints),
        "--etcd-prefix",
        prefix,
        "--progress-interval-s",
        "0.5",
        "--log-level",
        "warning",
        *extra,
    )
    servers = []
    for i in range(count):
        own = ("--replica-id", f"r{i}")
        if metrics:
            own += ("--metrics-port", str(free_port()))
        servers.append(ServerProcess(tmp / f"r{i}", *common, *own))
    for server in servers:
        server.start()
    return servers
