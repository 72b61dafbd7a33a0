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

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free now and never handed out before by this process.

    The kernel may give two binds in a row the same port, and servers start
    after their ports are chosen (a cluster's node and bus ports all at once;
    a server started by an earlier test may still hold its port): a port given
    twice made a node fail with "Address already in use".
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_for(predicate: object, timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(interval)
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
                # NOAUTH: up, and wanting a password (requirepass).
                return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def kill(self) -> None:
        """kill -9: no chance to write anything more."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        _stop(self.proc)


class RedisPair:
    """A durable primary and one replica of it (AOF always on both), in sync once started.

    `pause` stops the replica (SIGSTOP): the primary goes on, but WAIT for a
    replica no longer returns 1; `resume` lets it catch up.
    """

    def __init__(self, workdir: Path) -> None:
        # The replica syncs at once, not after the default 5 s wait for more of them.
        self.primary = RedisServer(
            workdir / "primary", durable=True, extra=("--repl-diskless-sync-delay", "0")
        )
        self.replica = RedisServer(
            workdir / "replica",
            durable=True,
            extra=("--replicaof", "127.0.0.1", str(self.primary.port)),
        )

    def start(self) -> RedisPair:
        self.primary.start()
        self.replica.start()
        wait_for(lambda: "state=online" in self.replication(), 20, "the replica in sync")
        # Online is not yet answering: it may still be loading what it was sent.
        wait_for(self.confirms, 20, "the replica confirming writes", interval=0.1)
        return self

    def confirms(self) -> bool:
        """Whether the replica confirms a write (WAIT) within a second."""
        result = subprocess.run(
            [require("redis-cli"), "-p", str(self.primary.port)],
            input="SET redis-pair-probe 1\nWAIT 1 1000\n",
            capture_output=True,
            check=False,
            text=True,
            timeout=5,
        )
        return result.stdout.split() == ["OK", "1"]

    def replication(self) -> str:
        return subprocess.run(
            [require("redis-cli"), "-p", str(self.primary.port), "INFO", "replication"],
            capture_output=True,
            check=False,
            text=True,
            timeout=5,
        ).stdout

    def pause(self) -> None:
        assert self.replica.proc is not None
        os.kill(self.replica.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.replica.proc is not None and self.replica.proc.poll() is None:
            os.kill(self.replica.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.resume()
        self.replica.stop()
        self.primary.stop()


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
        "--durability",
        "durable" if redis.durable else "fast",
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


def make_certificate(
    directory: Path, name: str, ca: tuple[Path, Path] | None = None
) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1: self-signed, or signed by `ca`."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subject = ("-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1")
    if ca is None:
        args = ("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subject)
        subprocess.run(
            [require("openssl"), *args, "-keyout", str(key), "-out", str(cert)],
            check=True,
            capture_output=True,
        )
        return cert, key
    csr = directory / f"{name}.csr"
    request = ("req", "-newkey", "rsa:2048", "-nodes", *subject[:2])
    subprocess.run(
        [require("openssl"), *request, "-keyout", str(key), "-out", str(csr)],
        check=True,
        capture_output=True,
    )
    sign = ("x509", "-req", "-in", str(csr), "-days", "1", "-CA", str(ca[0]), "-CAkey", str(ca[1]))
    subprocess.run(
        [require("openssl"), *sign, "-CAcreateserial", "-out", str(cert), "-extfile", "/dev/stdin"],
        input=b"subjectAltName=IP:127.0.0.1\n",
        check=True,
        capture_output=True,
    )
    return cert, key


class RedisClusterServers:
    """A Redis Cluster on loopback: `masters` shards, each with `replicas` replicas.

    Every node is a RedisServer with cluster mode on and its nodes.conf in its
    own directory; `redis-cli --cluster create` assigns the slots. A small
    `node_timeout_ms` makes a killed master's replica take over within about
    a second.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        masters: int = 3,
        replicas: int = 0,
        durable: bool = False,
        node_timeout_ms: int = 1000,
        extra: tuple[str, ...] = (),
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        """`tls`: (CA, certificate, key): nodes also listen with TLS, talk to each
        other with TLS, and tell TLS clients their TLS ports."""
        self.workdir = workdir
        self.masters = masters
        self.replicas = replicas
        cluster = (
            *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
            *("--cluster-node-timeout", str(node_timeout_ms)),
            # A replica takes over however long it was cut off: the tests kill masters.
            *("--cluster-replica-validity-factor", "0"),
            # Replicas sync at once, not after the default 5 s wait for more of them.
            *("--repl-diskless-sync-delay", "0"),
        )
        count = masters * (1 + replicas)
        self.tls_ports = [free_port() for _ in range(count)] if tls else []
        # The bus port is given: the default (port + 10000) may be taken or out of range.
        self.nodes = [
            RedisServer(
                workdir / f"node{i}",
                durable=durable,
                extra=(
                    *cluster,
                    *("--cluster-port", str(free_port())),
                    *self._tls(tls, i),
                    *extra,
                ),
            )
            for i in range(count)
        ]

    def _tls(self, tls: tuple[Path, Path, Path] | None, i: int) -> tuple[str, ...]:
        if tls is None:
            return ()
        ca, cert, key = (str(p) for p in tls)
        return (
            *("--tls-port", str(self.tls_ports[i]), "--tls-cert-file", cert),
            *("--tls-key-file", key, "--tls-ca-cert-file", ca, "--tls-auth-clients", "no"),
            *("--tls-cluster", "yes", "--tls-replication", "yes"),
        )

    @property
    def tls_url(self) -> str:
        return "rediss+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.tls_ports)

    @property
    def url(self) -> str:
        """The server's cluster URL: every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> RedisClusterServers:
        """Every node, then the cluster; on failure the nodes started are stopped."""
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(
                [
                    require("redis-cli"),
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{n.port}" for n in self.nodes),
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            wait_for(self.healthy, 60, "redis cluster", interval=0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def cli(self, node: RedisServer, *args: str) -> str:
        result = subprocess.run(
            [require("redis-cli"), "-p", str(node.port), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return result.stdout

    def live(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def healthy(self) -> bool:
        """Every live node sees the cluster ok and every other live node connected,
        and every primary has its replicas attached."""
        live = self.live()
        try:
            for node in live:
                if "cluster_state:ok" not in self.cli(node, "CLUSTER", "INFO"):
                    return False
                rows = [r.split() for r in self.cli(node, "CLUSTER", "NODES").splitlines()]
                if sum(1 for r in rows if r[7] == "connected" and "fail" not in r[2]) < len(live):
                    return False
            for node in self.master_nodes():
                info = self.cli(node, "INFO", "replication")
                if info.count("state=online") < self.replicas:
                    return False
            # Every node's slot map lists every primary's replicas.
            width = 2 + 3 * (1 + self.replicas)  # low, high, then host, port, id of each node
            return all(
                len(self.cli(n, "--raw", "CLUSTER", "SLOTS").split()) == self.masters * width
                for n in live
            )
        except (subprocess.SubprocessError, OSError, IndexError):
            return False

    def role_of(self, node: RedisServer) -> str:
        return self.cli(node, "ROLE").split("\n", 1)[0].strip()

    def master_nodes(self) -> list[RedisServer]:
        return [n for n in self.live() if self.role_of(n) == "master"]

    def kill_behind_its_replica(self, primary: RedisServer, lag_s: float) -> RedisServer:
        """kill -9 the primary after its replica was cut off for `lag_s` (stopped, and
        its link dropped, or the kernel would go on receiving for it): what the
        primary acknowledged meanwhile never reached the replica. Returns the
        replica, running again."""
        heir = self.replica_of(primary)
        assert heir.proc is not None
        heir.proc.send_signal(signal.SIGSTOP)
        self.cli(primary, "CLIENT", "KILL", "TYPE", "replica")
        time.sleep(lag_s)
        primary.kill()
        heir.proc.send_signal(signal.SIGCONT)
        return heir

    def replica_of(self, primary: RedisServer) -> RedisServer:
        for node in self.live():
            role = self.cli(node, "ROLE").split()
            if role[0] == "slave" and role[2] == str(primary.port):
                return node
        raise LookupError(f"no replica of the node on {primary.port}")

    def node_of(self, key: str) -> RedisServer:
        """The master that owns the key's slot now."""
        slot = int(self.cli(self.nodes[0], "CLUSTER", "KEYSLOT", key))
        for node in self.master_nodes():
            for row in self.cli(node, "CLUSTER", "NODES").splitlines():
                fields = row.split()
                if "myself" not in fields[2]:
                    continue
                for span in fields[8:]:
                    low, _, high = span.partition("-")
                    if low.isdigit() and int(low) <= slot <= int(high or low):
                        return node
        raise LookupError(f"no master owns the slot of {key!r}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
