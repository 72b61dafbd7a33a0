"""What the benchmark's processes share: latency recording, CPU accounting,
starting a gRPC server process and waiting until it reports SERVING."""

from __future__ import annotations

import asyncio
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

try:  # HdrHistogram when it is installed; exact percentiles of sorted samples otherwise.
    from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - depends on the environment
    HdrHistogram = None

HDR = HdrHistogram is not None
VALUE = b"x" * 100  # the payload of every put: a small status value
CALL_TIMEOUT_S = 30.0  # a stuck server ends the run with errors instead of hanging it
MAX_US = 60_000_000  # a minute: anything slower is clamped, and counted as such


class Latencies:
    """Latencies in microseconds; percentiles in milliseconds."""

    def __init__(self) -> None:
        self._hist = HdrHistogram(1, MAX_US, 3) if HdrHistogram is not None else None
        self._samples: list[int] = []
        self.count = 0
        self.clamped = 0
        self._max = 0

    def add(self, us: int) -> None:
        us = max(1, us)
        if us > MAX_US:
            self.clamped += 1
            us = MAX_US
        self.count += 1
        self._max = max(self._max, us)
        if self._hist is not None:
            self._hist.record_value(us)
        else:
            self._samples.append(us)

    def extend(self, values: Sequence[int]) -> None:
        for us in values:
            self.add(us)

    def percentile_ms(self, p: float) -> float:
        if not self.count:
            return float("nan")
        if self._hist is not None:  # a bucket's upper end: never report more than the max
            return min(int(self._hist.get_value_at_percentile(p)), self._max) / 1000
        self._samples.sort()
        rank = max(0, min(self.count - 1, round(p / 100 * self.count + 0.5) - 1))
        return self._samples[rank] / 1000

    def summary(self) -> dict[str, float | int]:
        return {
            "count": self.count,
            "p50_ms": round(self.percentile_ms(50), 3),
            "p90_ms": round(self.percentile_ms(90), 3),
            "p99_ms": round(self.percentile_ms(99), 3),
            "p999_ms": round(self.percentile_ms(99.9), 3),
            "max_ms": round(self._max / 1000, 3),
        }


# --- CPU ---------------------------------------------------------------------

TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    numbers = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = numbers[3] + numbers[4]
    total = sum(numbers[:8])
    return (total - idle) / TICKS, total / TICKS


async def wait_quiet(max_wait_s: float, threshold_pct: float = 25.0) -> tuple[float, float]:
    """Waits up to `max_wait_s` for a second in which the machine is busier than
    `threshold_pct` of one core no longer; returns (that busy %, seconds waited)."""
    start = time.monotonic()
    cores = os.cpu_count() or 1
    while True:
        busy0, total0 = machine_busy_s()
        await asyncio.sleep(1.0)
        busy1, total1 = machine_busy_s()
        pct = 100 * cores * (busy1 - busy0) / max(1e-9, total1 - total0)
        waited = time.monotonic() - start
        if pct < threshold_pct or waited >= max_wait_s:
            return round(pct, 1), round(waited, 1)


@dataclass
class CpuMeter:
    """CPU used by named processes over a window, as % of one core (the machine's
    total is cores x 100)."""

    pids: dict[str, int]
    # The busiest processes that are not ours, over the same window: (name, % of one core).
    others: list[tuple[str, float]] = field(default_factory=list)
    _start: dict[str, float] = field(default_factory=dict)
    _everyone: dict[int, tuple[str, float]] = field(default_factory=dict)
    _wall: float = 0.0
    _machine: tuple[float, float] = (0.0, 0.0)

    def start(self) -> None:
        self._wall = time.monotonic()
        self._start = {name: process_cpu_s(pid) for name, pid in self.pids.items()}
        self._everyone = every_process_cpu_s()
        self._machine = machine_busy_s()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._wall
        used = {
            name: round(100 * (process_cpu_s(pid) - self._start[name]) / wall, 1)
            for name, pid in self.pids.items()
        }
        busy, total = machine_busy_s()
        share = (busy - self._machine[0]) / max(1e-9, total - self._machine[1])
        machine_pct = 100 * share * (os.cpu_count() or 1)
        ours = sum(v for v in used.values() if not math.isnan(v))
        # Whatever else ran: the kernel's share of loopback networking not charged to
        # our processes, and anything else on the machine.
        used["other"] = round(max(0.0, machine_pct - ours), 1)
        used["machine"] = round(machine_pct, 1)
        ours_pids = set(self.pids.values())
        by_name: dict[str, float] = {}
        for pid, (name, cpu_s) in every_process_cpu_s().items():
            if pid not in ours_pids and pid in self._everyone:
                by_name[name] = by_name.get(name, 0.0) + cpu_s - self._everyone[pid][1]
        self.others = [
            (name, round(100 * cpu_s / wall, 1))
            for name, cpu_s in sorted(by_name.items(), key=lambda x: -x[1])[:4]
            if cpu_s / wall > 0.01
        ]
        return used


def every_process_cpu_s() -> dict[int, tuple[str, float]]:
    """pid -> (command name, CPU seconds so far) of every process on the machine."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        found[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / TICKS)
    return found


# --- processes ---------------------------------------------------------------


def python_env() -> dict[str, str]:
    """The environment for child Python processes: this checkout's tests/ importable."""
    root = str(Path(__file__).resolve().parent.parent)
    old = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, *([old] if old else [])])}


class ServerProcess:
    """A gRPC server in its own process, with its output in a log file."""

    def __init__(self, name: str, args: list[str], log_dir: Path) -> None:
        self.name = name
        self.args = args
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> ServerProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *self.args], stdout=log, stderr=log, env=python_env()
            )
        return self

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def wait_serving(self, address: str, within_s: float = 30.0) -> None:
        deadline = time.monotonic() + within_s
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                    )
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} not SERVING after {within_s}s")
                await asyncio.sleep(0.05)

    def stop(self, grace: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def machine() -> dict[str, object]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "platform": platform.platform(),
        "histogram": "HdrHistogram (3 significant digits)" if HDR else "exact (sorted samples)",
    }
