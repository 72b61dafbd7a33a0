"""`bb-loadtest bench --profile`: py-spy samples the server while a phase runs.

Writes the collapsed stacks (py-spy's raw format, for flamegraph tools) to
bench-results/profile-<phase>.txt and summarises where the time went.
Native frames are sampled too (grpc's and uvloop's C code is where much of the
time goes), which pauses the process at each sample: the figures of a profiled
run are a little lower than those of a plain one.
py-spy is not a project dependency: `pip install py-spy` to use this.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

LINE = re.compile(r" \([^()]*:\d+\)$")


class Profiler:
    def __init__(self, out_dir: Path | None) -> None:
        self.out_dir = out_dir
        self.files: dict[str, Path] = {}
        self._running: list[asyncio.subprocess.Process] = []
        self._py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if out_dir is not None:
            if not Path(self._py_spy).exists():
                raise RuntimeError("--profile needs py-spy: pip install py-spy")
            out_dir.mkdir(parents=True, exist_ok=True)

    async def start(self, name: str, pid: int, duration_s: float) -> None:
        if self.out_dir is None:
            return
        path = self.out_dir / f"profile-{name}.txt"
        self.files[name] = path
        self._running.append(
            await asyncio.create_subprocess_exec(
                self._py_spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, round(duration_s))),
                "--rate",
                "100",
                "--native",
                "--format",
                "raw",
                "--output",
                str(path),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        )

    async def wait(self) -> None:
        for proc in self._running:
            await proc.wait()
        self._running.clear()

    def summaries(self, top: int = 12) -> dict[str, dict[str, Any]]:
        return {name: summarise(path, top) for name, path in self.files.items() if path.exists()}


IDLE = ("epoll_wait", "epoll_pwait", "select", "poll")
OURS = ("blackboard_server/", "redis/", "grpc/")
OUTER = ("blackboard_server/__main__.py", "blackboard_server/app.py")


def summarise(path: Path, top: int) -> dict[str, Any]:
    """Where the busy samples went: by the function that was running (native frames
    included), and by the project / redis-py / grpc Python function they were under."""
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    busy = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        leaf = LINE.sub("", frames[-1])
        if leaf.startswith(IDLE):
            idle += count
            continue
        busy += count
        own[leaf] += count
        for frame in {LINE.sub("", f) for f in frames if _ours(f)}:
            under[frame] += count

    def pct(counter: Counter[str]) -> list[tuple[float, str]]:
        return [(round(100 * n / max(1, busy), 1), f) for f, n in counter.most_common(top)]

    return {
        "idle_pct": round(100 * idle / max(1, idle + busy), 1),
        "own": pct(own),
        "inclusive": pct(under),
    }


def _ours(frame: str) -> bool:
    """A Python frame of the server, redis-py or grpc's Python layer."""
    return ".py:" in frame and any(p in frame for p in OURS) and not any(p in frame for p in OUTER)
