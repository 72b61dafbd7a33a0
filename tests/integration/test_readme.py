"""The README's SDK example runs as printed, against a real server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.servers import ServerProcess

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_example_runs(tmp_path: Path) -> None:
    example = re.search(r"## The SDK in 20 lines\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert example is not None
    code = example.group(1)
    assert len(code.strip().splitlines()) <= 30
    server = ServerProcess(tmp_path / "server").start()
    try:
        script = tmp_path / "example.py"
        script.write_text(code.replace("127.0.0.1:50051", server.address))
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=30, check=False
        )
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    assert "already claimed" not in result.stdout
    assert result.stdout.strip().startswith("[")
