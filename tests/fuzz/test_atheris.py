"""The atheris harness (tests/fuzz/atheris_rpcs.py), run for a few thousand inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

RUNS = 4000


@pytest.mark.timeout(300)
def test_coverage_guided_fuzzing_finds_no_crash(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.atheris_rpcs",
            f"-runs={RUNS}",
            "-max_len=1024",
            "-seed=1",  # the same inputs every run
            f"-artifact_prefix={tmp_path}/",
        ],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert f"Done {RUNS} runs" in output
    assert not list(tmp_path.glob("crash-*"))
