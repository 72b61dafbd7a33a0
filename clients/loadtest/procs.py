"""CPU and memory of local processes (Linux /proc), and what machine this is."""

from __future__ import annotations

import asyncio
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from loadtest.stats import HDR

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = _stat_fields(pid)
    return math.nan if fields is None else (int(fields[11]) + int(fields[12])) / TICKS


def process_rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


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


@dataclass
class CpuMeter:
    """CPU used by named processes over a window, as % of one core (the machine's
    total is cores x 100), the peak RSS of each, and the busiest others."""

    pids: dict[str, int]
    others: list[tuple[str, float]] = field(default_factory=list)
    peak_rss: dict[str, int] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)  # what stop() returned
    _start: dict[str, float] = field(default_factory=dict)
    _everyone: dict[int, tuple[str, float]] = field(default_factory=dict)
    _wall: float = 0.0
    _machine: tuple[float, float] = (0.0, 0.0)

    def start(self) -> None:
        self._wall = time.monotonic()
        self._start = {name: process_cpu_s(pid) for name, pid in self.pids.items()}
        self._everyone = every_process_cpu_s()
        self._machine = machine_busy_s()
        self.sample_rss()

    def sample_rss(self) -> None:
        for name, pid in self.pids.items():
            self.peak_rss[name] = max(self.peak_rss.get(name, 0), process_rss_bytes(pid))

    def stop(self) -> dict[str, float]:
        self.sample_rss()
        wall = max(1e-9, time.monotonic() - self._wall)
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
        self.used = used
        return used

    async def sample_every(self, interval_s: float = 0.5) -> None:
        """Samples RSS until cancelled (a peak between start and stop is not missed)."""
        while True:
            await asyncio.sleep(interval_s)
            self.sample_rss()


def machine() -> dict[str, Any]:
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
