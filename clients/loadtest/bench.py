"""`make bench` (`bb-loadtest bench`): a short fixed run of the harness, and the
issue's target table (each target, the figure measured, pass or miss).

One redis-server (no AOF, then switched to appendfsync always for the durable
figure) and one etcd member on disk, started in a temp dir; Blackboard servers
in their own processes: one on Redis alone (the data phases, without the etcd
coordinator's background work on the cores), one on Redis + etcd (locks).
`--full` adds the phases that do not fit in the short run's three minutes: 1000
subscribers, 10,000 idle subscribers, 1 vs 100,000 conversations.

Phases are a registry (`PHASES`, `@phase`): a module in this package adds its
own with `@phase(...)` and is named in `PHASE_MODULES`, which is imported
before the run. The target "--workers 2 >= 1.3 x one process" is read from a
phase named "workers" whose result holds {"ratio": workers-2 / one-process
throughput}; until one is registered the table says "not run".
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from loadtest import handoff
from loadtest.baselines import echo_baseline, etcd_baseline
from loadtest.benchtable import print_bench
from loadtest.cli import run_loop
from loadtest.html import write_html
from loadtest.loop import Shape
from loadtest.procs import machine, wait_quiet
from loadtest.profile import Profiler
from loadtest.report import to_json
from loadtest.run import RunSpec, run_scenario
from loadtest.scenarios import Options
from loadtest.target import Endpoint, Plan, endpoint, start_etcd, start_redis, version

RESULTS = Path("bench-results") / "latest.json"


@dataclass
class Bench:
    """What every phase may use: settings, the shared backends, the results so far."""

    args: argparse.Namespace
    workdir: Path
    redis_url: str = ""
    etcd_endpoints: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    data_server: Endpoint | None = None
    profiler: Profiler | None = None
    runs: int = 0  # harness runs so far: their HTML reports are numbered

    def shape(self, **kw: Any) -> Shape:
        base = {"concurrency": 64, "duration_s": self.args.duration, "warmup_s": self.args.warmup}
        return Shape(**{**base, **kw})


PhaseFn = Callable[[Bench], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Phase:
    name: str
    run: PhaseFn
    full_only: bool = False
    server: str = "data"  # "data": the Redis-only server; "coordination"; "none"


PHASES: list[Phase] = []
PHASE_MODULES: tuple[str, ...] = ("loadtest.replicas",)  # imported: their phases register


def phase(
    name: str, *, full_only: bool = False, server: str = "data"
) -> Callable[[PhaseFn], PhaseFn]:
    def add(fn: PhaseFn) -> PhaseFn:
        PHASES.append(Phase(name, fn, full_only, server))
        return fn

    return add


def _unary(run: dict[str, Any], op: str) -> dict[str, Any]:
    """A scenario run reduced to one operation's figures, like a baseline's."""
    ops = run["ops"].get(op, {"achieved_per_s": 0.0, "latency": {}, "errors": {}})
    return {
        **ops,
        "cpu_pct_of_one_core": run.get("cpu_pct_of_one_core", {}),
        "peak_rss_mib": run.get("peak_rss_mib", {}),
        "busiest_other_processes": run.get("busiest_other_processes", []),
        "check": run["check"],
        **({"schedule_delay": run["schedule_delay"]} if "schedule_delay" in run else {}),
    }


async def _scenario(b: Bench, name: str, shape: Shape, **opts: Any) -> dict[str, Any]:
    """One harness run; its report with plots goes next to the results, one per run."""
    assert b.data_server is not None
    spec = RunSpec(name, shape, Options(**opts), progress=not b.args.quiet)
    run = await run_scenario(b.data_server, spec)
    b.runs += 1
    page = Path(b.args.json).parent / f"run-{b.runs}-{name}.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    report = {**b.result, "target": b.data_server.description, "run": run}
    await asyncio.to_thread(write_html, report, page)
    return run


@phase("echo", server="none")
async def _echo(b: Bench) -> dict[str, Any]:
    return await echo_baseline(b.shape(), b.workdir, 1)


@phase("echo_redis", server="none")
async def _echo_redis(b: Bench) -> dict[str, Any]:
    """The echo after one Redis script call that does nothing: the floor under a Put."""
    redis = (b.redis_url, {"redis": b.pids["redis"]})
    return await echo_baseline(b.shape(), b.workdir, 1, redis)


@phase("echo_commit", server="none")
async def _echo_commit(b: Bench) -> dict[str, Any]:
    """The echo after the store's commit of a Put: the floor under a Put through it."""
    redis = (b.redis_url, {"redis": b.pids["redis"]})
    return await echo_baseline(b.shape(), b.workdir, 1, redis, commit=True)


@phase("put")
async def _put(b: Bench) -> dict[str, Any]:
    return _unary(await _scenario(b, "write-heavy", b.shape(), keys=1), "put")


@phase("put_at_1000")
async def _put_at_rate(b: Bench) -> dict[str, Any]:
    return _unary(await _scenario(b, "write-heavy", b.shape(rate=1000.0), keys=1), "put")


@phase("fanout")
async def _fanout(b: Bench) -> dict[str, Any]:
    shape = b.shape(concurrency=1, rate=200.0, duration_s=b.args.fanout_duration, warmup_s=0)
    run = await _scenario(b, "fan-out", shape, subscribers=100, subscriber_procs=2)
    return {**_unary(run, "put"), "delivery": run.get("delivery", {}), "shape": run["shape"]}


@phase("durable_put_sdk")
async def _durable(b: Bench) -> dict[str, Any]:
    """Put through the SDK (unary, then its writer on a Write stream) with Redis
    fsyncing every write, then etcd put at the same concurrency from the same
    client: the second write-path target, met by the faster of the two."""
    client = aioredis.Redis.from_url(b.redis_url)
    try:
        await client.config_set("appendonly", "yes")
        await client.config_set("appendfsync", "always")
        await asyncio.sleep(0.5)  # the AOF rewrite that turning it on starts
        sdk = _unary(await _scenario(b, "write-heavy", b.shape(), keys=1, sdk=True), "put")
        run = await _scenario(b, "write-heavy", b.shape(), keys=1, sdk_writer=True)
        writer = _unary(run, "put")
    finally:
        await client.config_set("appendonly", "no")
        await client.aclose()
    ep = Endpoint("", etcd_endpoints=b.etcd_endpoints, pids={"etcd": b.pids["etcd"]})
    etcd = await etcd_baseline(ep, b.shape(), b.workdir)
    return {"sdk_put": sdk, "sdk_writer_put": writer, "etcd_put": etcd}


@phase("coordination", server="coordination")
async def _coordination(b: Bench) -> dict[str, Any]:
    assert b.data_server is not None
    a = b.args
    return await handoff.run_locks(b.data_server, a.lock_rounds, a.lock_handoffs, a.lock_settle_ms)


@phase("fanout_1000", full_only=True)
async def _fanout_1000(b: Bench) -> dict[str, Any]:
    shape = b.shape(concurrency=1, rate=200.0, duration_s=b.args.fanout_duration, warmup_s=0)
    run = await _scenario(b, "fan-out", shape, subscribers=1000, subscriber_procs=4)
    return {**_unary(run, "put"), "delivery": run.get("delivery", {})}


@phase("idle_10000", full_only=True)
async def _idle(b: Bench) -> dict[str, Any]:
    """10,000 subscribers open (100 on each of 100 conversations) and mostly idle:
    10 writes a second in all, so each stream gets an event about every 10 s and
    its progress messages. The server's RSS, and write latency beside them."""
    shape = b.shape(concurrency=1, rate=10.0, warmup_s=0)
    run = await _scenario(
        b, "fan-out", shape, conversations=100, subscribers=100, subscriber_procs=4
    )
    return _unary(run, "put")


@phase("conversations_100000", full_only=True)
async def _many(b: Bench) -> dict[str, Any]:
    """Put latency at 1000 writes/s over 1, then over 100,000 conversations."""
    shape = b.shape(rate=1000.0)
    one = _unary(await _scenario(b, "write-heavy", shape, keys=1), "put")
    many = _unary(await _scenario(b, "write-heavy", shape, keys=1, conversations=100_000), "put")
    return {"one": one, "many": many}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    for module in PHASE_MODULES:
        importlib.import_module(module)
    result: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "client_loop": type(asyncio.get_running_loop()).__module__,
        "settings": vars(args),
    }
    busy, waited = await wait_quiet(args.wait_quiet)
    result["machine_busy_before_start_pct"] = busy
    result["waited_for_quiet_s"] = waited
    with tempfile.TemporaryDirectory(prefix="bb-bench-") as tmp:
        b = Bench(args, Path(tmp), result=result)
        if args.profile:
            b.profiler = Profiler(Path(args.json).parent)
        redis, b.redis_url = await start_redis(b.workdir)
        etcd, endpoint_ = await start_etcd(b.workdir)
        b.etcd_endpoints, b.pids = [endpoint_], {"redis": redis.pid, "etcd": etcd.pid}
        result["redis"] = version("redis-server")
        result["etcd"] = f"{version('etcd')}, 1 member, data on disk"
        try:
            for server in ("none", "data", "coordination"):
                await _phases(b, server)
        finally:
            etcd.stop()
            redis.stop()
    if b.profiler is not None:
        result["profile"] = b.profiler.summaries()
    return result


async def _phases(b: Bench, server: str) -> None:
    todo = [p for p in PHASES if p.server == server and (b.args.full or not p.full_only)]
    todo = [p for p in todo if not b.args.only or p.name in b.args.only]
    if not todo:
        return
    if server == "none":
        for p in todo:
            b.result[p.name] = await _guarded(p, b)
        return
    plan = Plan(
        backend="redis",
        redis_url=b.redis_url,
        etcd_endpoints=b.etcd_endpoints if server == "coordination" else [],
        server_flags=["--durability", "fast"],  # the Redis started above has no AOF
        workdir=b.workdir,
    )
    async with endpoint(plan) as ep:
        ep.pids.update(b.pids if server == "coordination" else {"redis": b.pids["redis"]})
        b.data_server = ep
        for p in todo:
            if b.profiler is not None:
                seconds = b.args.duration + b.args.warmup
                await b.profiler.start(p.name, ep.pids["server"], seconds)
            b.result[p.name] = await _guarded(p, b)
            if b.profiler is not None:
                await b.profiler.wait()
            if ep.server_died():
                b.result["server_died"] = ep.server_died()
                return


async def _guarded(p: Phase, b: Bench) -> dict[str, Any]:
    """A failed phase is recorded and reported; the next one still runs."""
    if not b.args.quiet:
        print(f"phase {p.name} ...", file=sys.stderr)
    try:
        return await p.run(b)
    except Exception as error:
        print(f"{p.name} failed: {type(error).__name__}: {error}", file=sys.stderr)
        return {"error": f"{type(error).__name__}: {error}"[:2000]}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bb-loadtest bench", description=__doc__)
    p.add_argument("--full", action="store_true", help="also the long phases (bench-full)")
    p.add_argument("--only", action="append", default=[], help="run only this phase")
    p.add_argument("--duration", type=float, default=8.0, help="seconds measured per phase")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--fanout-duration", type=float, default=10.0)
    p.add_argument("--lock-rounds", type=int, default=300, help="acquire + release round trips")
    p.add_argument("--lock-handoffs", type=int, default=60, help="hand-offs per case")
    p.add_argument("--lock-settle-ms", type=int, default=200)
    p.add_argument("--wait-quiet", type=float, default=20.0, help="max wait for an idle machine")
    p.add_argument("--json", default=str(RESULTS), help="where the results go")
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--profile",
        action="store_true",
        help="sample the server with py-spy during each phase (pip install py-spy)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = run_loop(bench(args))
    print_bench(result)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_json(result))
    print(f"\nwrote {out}")
    failed = any(isinstance(v, dict) and "error" in v for v in result.values())
    return 1 if failed or "server_died" in result else 0


if __name__ == "__main__":
    sys.exit(main())
