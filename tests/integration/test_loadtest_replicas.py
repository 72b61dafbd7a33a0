"""`make bench`'s replica phases, cut short: each server shape serves the load
with every write checked, and fan-out across replicas delivers everything."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_loadtest import BINARY


@pytest.mark.redis
@pytest.mark.timeout(300)
def test_the_replica_phases_run_every_shape(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    phases = ["--only", "workers", "--only", "fanout_replicas"]
    tiny = ["--duration", "1", "--warmup", "0.2", "--fanout-duration", "1.5", "--wait-quiet", "0"]
    proc = subprocess.run(
        [BINARY, "bench", *phases, *tiny, "--quiet", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    shapes = result["workers"]
    for shape in ("one_process", "two_replicas", "workers_2"):
        assert shapes[shape]["achieved_per_s"] > 0 and shapes[shape]["check"]["passed"], shape
        assert not shapes[shape]["errors"], shapes[shape]["errors"]
    assert shapes["ratio"] > 0
    # --workers 2 really ran two worker processes, each metered.
    cpu = shapes["workers_2"]["cpu_pct_of_one_core"]
    assert {"server-w0", "server-w1"} <= set(cpu)
    fan = result["fanout_replicas"]
    assert fan["check"]["passed"] and fan["delivery"]["deliveries"] > 0
    line = next(x for x in proc.stdout.splitlines() if x.startswith("--workers 2 / one"))
    assert line.rstrip().endswith(("pass", "MISS")), line
    assert "writes/s 2 replicas" in proc.stdout
    assert "fan-out across replicas deliveries/s" in proc.stdout
