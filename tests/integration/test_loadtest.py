"""The real bb-loadtest binary, briefly, against servers it starts itself."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from loadtest import echo
from loadtest.catalog import scenario_names
from loadtest.target import Endpoint, Process, free_port

BINARY = str(Path(sys.executable).with_name("bb-loadtest"))
SHORT = ["--duration", "1.5", "--warmup", "0.3", "--quiet"]


def loadtest(tmp_path: Path, *args: str, timeout: float = 150) -> tuple[int, dict[str, Any], str]:
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [BINARY, *args, *SHORT, "--json", str(out), "--workdir", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    result = json.loads(out.read_text()) if out.exists() else {}
    return proc.returncode, result, proc.stdout + proc.stderr


def assert_sound(run: dict[str, Any]) -> None:
    """Operations were counted, the check passed, and percentiles are ordered."""
    assert run["check"]["passed"], run["check"]["problems"]
    assert run["check"]["checked"]["acknowledged_keys"] > 0  # the check had something to read
    assert run["steps_achieved_per_s"] > 0
    assert run["ops"], "no operation was recorded"
    for name, op in run["ops"].items():
        lat = op["latency"]
        assert op["ok"] == lat["count"] > 0, name
        ordered = [lat[k] for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")]
        assert all(not math.isnan(v) for v in ordered), name
        assert ordered == sorted(ordered), (name, ordered)
        assert sum(row["ok"] for row in op["timeline"]) == op["ok"], name


@pytest.mark.timeout(200)
@pytest.mark.parametrize("scenario", scenario_names())
def test_each_scenario_against_an_embedded_server(tmp_path: Path, scenario: str) -> None:
    code, result, output = loadtest(tmp_path, scenario, "--concurrency", "4")
    assert code == 0, output
    run = result["run"]
    assert run["scenario"] == scenario
    assert_sound(run)
    assert "server" in run["cpu_pct_of_one_core"] and run["peak_rss_mib"]["server"] > 0
    assert "correctness check: PASSED" in output


@pytest.mark.timeout(200)
@pytest.mark.parametrize("path", ["--sdk", "--sdk-writer"])
def test_writes_through_the_sdk_are_checked_too(tmp_path: Path, path: str) -> None:
    code, result, output = loadtest(tmp_path, "write-heavy", path, "--concurrency", "4")
    assert code == 0, output
    assert_sound(result["run"])


@pytest.mark.timeout(200)
def test_fan_out_subscribers_in_processes_are_gapless(tmp_path: Path) -> None:
    code, result, output = loadtest(
        tmp_path, "fan-out", "--rate", "100", "--subscribers", "6", "--subscriber-procs", "2"
    )
    assert code == 0, output
    run = result["run"]
    assert_sound(run)
    assert run["check"]["checked"]["subscribers"] == 6
    lag = run["delivery"]["commit_to_delivery"]
    assert lag["count"] == run["delivery"]["deliveries"] > 0
    assert run["schedule_delay"]["count"] > 0  # open loop: how late each send left


@pytest.mark.redis
@pytest.mark.timeout(300)
def test_team_on_redis_and_etcd_with_html_and_compare(tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    code, result, output = loadtest(
        tmp_path, "team", "--backend", "redis-etcd", "--concurrency", "4", "--compare",
        "--html", str(html), timeout=280,
    )  # fmt: skip
    assert code == 0, output
    assert "Redis + etcd" in result["target"]
    run = result["run"]
    assert_sound(run)
    # Every append acknowledged was read back: those measured, and those of the warm-up.
    assert run["check"]["checked"]["appended_children"] >= run["ops"]["append"]["ok"] > 0
    assert {"redis", "etcd", "server"} <= set(run["peak_rss_mib"])
    for name in ("echo", "redis-lua", "etcd"):
        assert result["compare"][name]["achieved_per_s"] > 0, result["compare"][name]
    assert result["compare"]["etcd"]["lag"]["count"] > 0
    page = html.read_text()
    assert page.count("<svg") >= 4  # latency over time (2), throughput, a histogram per op
    for title in ("latency over time", "throughput over time", "latency histogram: append"):
        assert title in page
    assert "rate ratio" in output


@pytest.mark.timeout(200)
def test_a_lost_acknowledged_write_fails_the_run(tmp_path: Path) -> None:
    code, result, output = loadtest(
        tmp_path, "write-heavy", "--concurrency", "2", "--inject-lost-write"
    )
    assert code == 1, output
    check = result["run"]["check"]
    assert not check["passed"]
    assert len(check["problems"]) == 1 and "now absent" in check["problems"][0]
    assert "correctness check: FAILED" in output


@pytest.mark.redis
@pytest.mark.timeout(300)
def test_bench_prints_the_target_table_and_writes_its_results(tmp_path: Path) -> None:
    """`make bench`, cut short: a few phases with tiny settings (figures not asserted)."""
    out = tmp_path / "results" / "latest.json"
    phases = ["--only", "echo", "--only", "echo_redis", "--only", "echo_commit", "--only", "put"]
    phases += ["--only", "fanout", "--only", "coordination"]
    tiny = ["--duration", "1", "--warmup", "0.2", "--fanout-duration", "1.5"]
    tiny += ["--lock-rounds", "5", "--lock-handoffs", "2", "--wait-quiet", "0"]
    proc = subprocess.run(
        [BINARY, "bench", *phases, *tiny, "--quiet", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["put"]["check"]["passed"] and result["fanout"]["check"]["passed"]
    assert result["put"]["achieved_per_s"] > 0 and result["echo"]["achieved_per_s"] > 0
    for floor in ("echo_redis", "echo_commit"):  # each call made its Redis call, or failed
        assert result[floor]["achieved_per_s"] > 0 and not result[floor]["errors"], result[floor]
        assert f"{floor} / echo QPS" in proc.stdout
    assert [c["settle_ms"] for c in result["coordination"]["handoff"]] == [0, 200]
    table = proc.stdout
    for row in ("Put / echo QPS", "fan-out 100 subscribers, p99 lag ms", "lock hand-off (at once)"):
        line = next(x for x in table.splitlines() if x.startswith(row))
        assert line.rstrip().endswith(("pass", "MISS")), line
    workers = next(x for x in table.splitlines() if x.startswith("--workers 2"))
    assert "not run" in workers and "(phase workers)" in workers
    assert "etcd v3lock hand-off (at once)" in table and "echo server CPU us/op" in table
    assert sorted(p.name for p in out.parent.glob("run-*.html")) == [
        "run-1-write-heavy.html",
        "run-2-fan-out.html",
    ]


@pytest.mark.timeout(60)
async def test_the_harness_channel_speaks_tls_with_the_given_ca(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    self_signed = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    self_signed += ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"]
    openssl = ["openssl", *self_signed, "-keyout", str(key), "-out", str(cert)]
    await asyncio.to_thread(subprocess.run, openssl, capture_output=True, check=True, timeout=30)
    address = f"localhost:{free_port()}"
    argv = [sys.executable, "-m", "loadtest.echo", "--listen", address]
    server = Process("echo", [*argv, "--tls-cert", str(cert), "--tls-key", str(key)], tmp_path)
    try:
        trusted = Endpoint(address, tls_ca=cert.read_bytes(), token="t0k")
        assert ("authorization", "Bearer t0k") in trusted.metadata()
        request = b"\x0a\x04ping"
        async with trusted.channel() as channel:
            call = channel.unary_unary(echo.METHOD)
            reply = await call(request, timeout=20, wait_for_ready=True)
        assert reply == request
        async with Endpoint(address).channel() as plain:  # no TLS: the server refuses it
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await plain.unary_unary(echo.METHOD)(request, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()
