"""bb-loadtest: drive a Blackboard server with many agents and report what it did.

    bb-loadtest write-heavy --duration 10 --concurrency 64
    bb-loadtest fan-out --rate 200 --subscribers 100 --subscriber-procs 2 --html report.html
    bb-loadtest team --backend redis-etcd --json team.json
    bb-loadtest write-heavy --address bb.example.com:443 --tls --token "$TOKEN"
    bb-loadtest write-heavy --compare          # also echo, Redis Lua and etcd: ratios
    bb-loadtest bench [--full]                 # make bench: the fixed run and its targets

Exit status: 0 when the correctness check passed, 1 when it failed (or the
server died), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from loadtest.catalog import SCENARIOS, scenario_names
from loadtest.loop import Shape
from loadtest.procs import machine
from loadtest.report import print_run, to_json
from loadtest.run import RunSpec, run_scenario
from loadtest.scenarios import Options
from loadtest.target import Plan, endpoint

T = TypeVar("T")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bb-loadtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    helps = "; ".join(f"{n}: {SCENARIOS[n].help}" for n in scenario_names())
    p.add_argument("scenario", choices=scenario_names(), help=helps)
    t = p.add_argument_group("target (default: a blackboard-server started here)")
    t.add_argument("--address", default="", help="a running server, host:port")
    t.add_argument("--tls", action="store_true", help="TLS with the system's root certificates")
    t.add_argument("--tls-ca", default="", help="TLS, trusting this CA certificate (PEM)")
    t.add_argument(
        "--token", default=os.environ.get("BB_TOKEN", ""), help="bearer token (or BB_TOKEN)"
    )
    t.add_argument(
        "--backend",
        choices=("embedded", "redis", "redis-etcd"),
        default="embedded",
        help="what the started server runs on; redis-server and etcd are started here",
    )
    t.add_argument("--redis-url", default="", help="use this Redis instead of starting one")
    t.add_argument("--etcd-endpoints", default="", help="use this etcd (host:port,...)")
    t.add_argument("--redis-durable", action="store_true", help="AOF with appendfsync always")
    t.add_argument(
        "--server-flag", action="append", default=[], help="passed to the started server"
    )
    t.add_argument(
        "--server-pid", type=int, default=0, help="with --address: meter this local process"
    )
    t.add_argument("--workdir", default="", help="logs and data of started processes")
    load = p.add_argument_group("load")
    load.add_argument("--concurrency", type=int, default=0, help="in flight (closed loop)")
    load.add_argument("--rate", type=float, default=-1, help="steps/s: open loop (0: closed)")
    load.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    load.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    load.add_argument("--requests", type=int, default=0, help="stop after this many steps")
    load.add_argument("--max-in-flight", type=int, default=10_000, help="open loop's cap")
    load.add_argument("--channels", type=int, default=1, help="gRPC channels (connections)")
    s = p.add_argument_group("scenario")
    s.add_argument("--conversations", type=int, default=1)
    s.add_argument("--keys", type=int, default=16, help="keys per worker / per conversation")
    s.add_argument("--read-ratio", type=float, default=0.9, help="read-heavy: share of gets")
    s.add_argument("--subscribers", type=int, default=-1, help="per conversation")
    s.add_argument("--subscriber-procs", type=int, default=0, help="0: in this process")
    s.add_argument("--subscriber-channels", type=int, default=5, help="per subscriber process")
    s.add_argument("--locks", type=int, default=4, help="locks, roles or counters per conv.")
    s.add_argument("--tasks", type=int, default=64, help="team: task ids per conversation")
    s.add_argument("--wait", type=float, default=5.0, help="lock / campaign wait, seconds")
    s.add_argument("--sdk", action="store_true", help="puts through the SDK, not raw stubs")
    s.add_argument(
        "--sdk-writer",
        action="store_true",
        help="puts through the SDK's writer: one Write stream, many puts per message",
    )
    o = p.add_argument_group("output")
    o.add_argument("--json", default="", help="write the full result here")
    o.add_argument("--html", default="", help="write a report with plots here")
    o.add_argument("--quiet", action="store_true", help="no progress line")
    o.add_argument(
        "--compare",
        action="store_true",
        help="the same shape against a bare gRPC echo, Redis Lua writes and etcd put + watch",
    )
    p.add_argument("--inject-lost-write", action="store_true", help=argparse.SUPPRESS)
    return p


def spec_from(args: argparse.Namespace) -> RunSpec:
    cls = SCENARIOS[args.scenario]
    rate = cls.rate if args.rate < 0 else args.rate
    shape = Shape(
        concurrency=args.concurrency or cls.concurrency,
        rate=rate,
        duration_s=args.duration,
        warmup_s=args.warmup,
        requests=args.requests,
        max_in_flight=args.max_in_flight,
    )
    opts = Options(
        conversations=args.conversations,
        keys=args.keys,
        read_ratio=args.read_ratio,
        subscribers=cls.subscribers if args.subscribers < 0 else args.subscribers,
        subscriber_procs=args.subscriber_procs,
        subscriber_channels=args.subscriber_channels,
        locks=args.locks,
        tasks=args.tasks,
        wait_s=args.wait,
        sdk=args.sdk,
        sdk_writer=args.sdk_writer,
    )
    return RunSpec(
        args.scenario,
        shape,
        opts,
        channels=args.channels,
        tls_ca=args.tls_ca,
        inject_lost_write=args.inject_lost_write,
        progress=not args.quiet,
    )


def plan_from(args: argparse.Namespace, workdir: Path) -> Plan:
    return Plan(
        address=args.address,
        backend=args.backend,
        redis_url=args.redis_url,
        etcd_endpoints=[e for e in args.etcd_endpoints.split(",") if e],
        redis_durable=args.redis_durable,
        tls_ca=args.tls_ca,
        tls=args.tls,
        token=args.token,
        server_flags=args.server_flag,
        server_pid=args.server_pid,
        workdir=workdir,
    )


async def main_async(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    spec = spec_from(args)
    result: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "client_loop": type(asyncio.get_running_loop()).__module__,
    }
    async with endpoint(plan_from(args, workdir)) as ep:
        result["target"] = ep.description
        result["run"] = await run_scenario(ep, spec)
        if args.compare:
            from loadtest.baselines import compare

            result["compare"] = await compare(ep, spec, workdir)
    return result


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from loadtest.bench import main as bench_main

        return bench_main(argv[1:])
    args = parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bb-loadtest-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            result = run_loop(main_async(args, workdir))
        except KeyboardInterrupt:
            return 130
    print_run(result)
    if args.json:
        Path(args.json).write_text(to_json(result))
    if args.html:
        from loadtest.html import write_html

        write_html(result, Path(args.html))
    run = result["run"]
    return 0 if run["check"]["passed"] and "server_died" not in run else 1


if __name__ == "__main__":
    sys.exit(main())
