"""`--workers N`: N server processes on one host sharing one port.

The parent serves nothing. It starts N workers (this program again, with
`--workers 1 --reuse-port on`, a replica id and a metrics port of their own),
so the kernel spreads connections over them with SO_REUSEPORT. A worker that
dies is started again after a backoff (1 s, doubling to 30 s, back to 1 s once
it has run for a minute): the others serve meanwhile, and clients that lost a
connection reconnect to them. SIGTERM or SIGINT is forwarded to every worker,
each drains as a single server does, and one still running `shutdown_grace_s`
+ 5 s later is killed.

Worker i is replica `<replica_id or a random id>-w<i>` (`-w<i>-r<n>` after its
n-th restart, so a restarted worker never takes over a dead one's etcd keys)
and serves /metrics on `metrics_port + i`.
"""

from __future__ import annotations

import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType

import structlog

from blackboard_server.config import Settings

log = structlog.get_logger("blackboard.workers")

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
HEALTHY_AFTER_S = 60.0
KILL_MARGIN_S = 5.0


@dataclass
class Worker:
    index: int
    restarts: int = 0
    backoff_s: float = FIRST_BACKOFF_S
    started_at: float = 0.0
    due_at: float = 0.0  # when a dead worker is started again
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)


def worker_argv(argv: Sequence[str], settings: Settings, base_id: str, worker: Worker) -> list[str]:
    """The command line of one worker: the parent's, with its own overrides last (they win)."""
    replica = f"{base_id}-w{worker.index}"
    if worker.restarts:
        replica += f"-r{worker.restarts}"
    metrics = settings.metrics_port + worker.index if settings.metrics_port else 0
    return [
        sys.executable,
        "-m",
        "blackboard_server",
        *argv,
        "--workers",
        "1",
        "--reuse-port",
        "on",
        "--replica-id",
        replica,
        "--metrics-port",
        str(metrics),
    ]


def next_backoff(worker: Worker, ran_s: float) -> float:
    """How long to wait before restarting `worker`, which ran for `ran_s`; pure."""
    if ran_s >= HEALTHY_AFTER_S:
        worker.backoff_s = FIRST_BACKOFF_S
    wait = worker.backoff_s
    worker.backoff_s = min(MAX_BACKOFF_S, worker.backoff_s * 2)
    return wait


class Supervisor:
    def __init__(self, argv: Sequence[str], settings: Settings) -> None:
        self._argv = list(argv)
        self._settings = settings
        self._base_id = settings.replica_id or f"{socket.gethostname()}-{secrets.token_hex(3)}"
        self._workers = [Worker(i) for i in range(settings.workers)]
        self._stopping: int | None = None  # the signal that asked us to stop

    def _start(self, worker: Worker) -> None:
        worker.proc = subprocess.Popen(
            worker_argv(self._argv, self._settings, self._base_id, worker)
        )
        worker.started_at = time.monotonic()
        log.info("worker started", worker=worker.index, pid=worker.proc.pid)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = signum

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        for worker in self._workers:
            self._start(worker)
        while self._stopping is None:
            self._reap()
            time.sleep(0.2)
        return self._stop(self._stopping)

    def _reap(self) -> None:
        now = time.monotonic()
        for worker in self._workers:
            if worker.proc is not None and worker.proc.poll() is not None:
                wait = next_backoff(worker, now - worker.started_at)
                log.error(
                    "worker exited; starting it again",
                    worker=worker.index,
                    code=worker.proc.returncode,
                    after_s=wait,
                )
                worker.proc = None
                worker.due_at = now + wait
                worker.restarts += 1
            if worker.proc is None and now >= worker.due_at:
                self._start(worker)

    def _stop(self, signum: int) -> int:
        running = [w.proc for w in self._workers if w.proc is not None]
        log.info("stopping workers", signal=signal.Signals(signum).name, workers=len(running))
        for proc in running:
            if proc.poll() is None:
                proc.send_signal(signum)
        deadline = time.monotonic() + self._settings.shutdown_grace_s + KILL_MARGIN_S
        failed = False
        for proc in running:
            try:
                code = proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker did not stop within the grace; killing it", pid=proc.pid)
                proc.kill()
                code = proc.wait()
            # A worker still starting up has no handler yet: the signal itself ends it.
            failed = failed or code not in (0, -signum)
        return 1 if failed else 0


def supervise(argv: Sequence[str], settings: Settings) -> int:
    return Supervisor(argv, settings).run()
