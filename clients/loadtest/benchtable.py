"""`make bench`'s tables: the issue's targets (measured, pass or miss), then every
figure, then the context they were measured in (CPU of each process, others)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from loadtest.report import NOISY_PCT, table


@dataclass(frozen=True)
class Row:
    figure: str
    value: str
    target: str = ""
    ok: bool | None = None  # None: informational; a target row without a figure says why


def _get(r: Any, *path: str) -> Any:
    """r[path[0]][path[1]]...; a digit indexes a list; None where anything is missing."""
    for key in path:
        if isinstance(r, list) and key.isdigit() and int(key) < len(r):
            r = r[int(key)]
        elif isinstance(r, dict) and key in r:
            r = r[key]
        else:
            return None
    return r


def _pair(lat: dict[str, Any] | None) -> str:
    if not lat or "p50_ms" not in lat:
        return "-"
    return f"{lat['p50_ms']:.2f} / {lat['p99_ms']:.2f}"


def _cpu_per_op(phase: dict[str, Any], process: str) -> float:
    pct = phase.get("cpu_pct_of_one_core", {}).get(process, math.nan)
    rate = phase.get("achieved_per_s") or 0
    return math.nan if math.isnan(pct) or not rate else float(pct / 100 * 1e6 / rate)


def _ratio(a: float | None, b: float | None) -> float:
    return a / b if a and b else math.nan


def _target(
    r: dict[str, Any],
    figure: str,
    phases: tuple[str, ...],
    value: float | None,
    want: str,
    fmt: str = "{:.2f}",
) -> Row:
    """One target row; `want` is ">= X" or "<= X". "not run" names the phases missing,
    ERROR a phase that failed."""
    missing = [p for p in phases if p not in r]
    if missing:
        return Row(figure, "not run", f"{want} (phase {', '.join(missing)})")
    if any("error" in r[p] for p in phases):
        return Row(figure, "ERROR", want, False)
    if value is None or math.isnan(value):
        return Row(figure, "-", want, False)
    op, limit = want.split()
    bound = float(limit.replace(",", ""))
    return Row(figure, fmt.format(value), want, value >= bound if op == ">=" else value <= bound)


def targets(r: dict[str, Any]) -> list[Row]:
    """The targets of the performance roadmap, in its order."""
    put_echo = _ratio(_get(r, "put", "achieved_per_s"), _get(r, "echo", "achieved_per_s"))
    fastest = max(
        (_get(r, "durable_put_sdk", k, "achieved_per_s") for k in ("sdk_put", "sdk_writer_put")),
        key=lambda v: -1.0 if v is None or math.isnan(v) else v,
    )
    durable = _ratio(fastest, _get(r, "durable_put_sdk", "etcd_put", "achieved_per_s"))
    many = "conversations_100000"
    conversations = _ratio(
        _get(r, many, "many", "latency", "p99_ms"), _get(r, many, "one", "latency", "p99_ms")
    )
    workers = _get(r, "workers", "ratio")
    rows = [
        _target(r, "Put / echo QPS, 64 in flight", ("put", "echo"), put_echo, ">= 0.80"),
        _target(r, "--workers 2 / one process", ("workers",), workers, ">= 1.30"),
        _target(
            r,
            "SDK's fastest put (Redis fsync always) / etcd put",
            ("durable_put_sdk",),
            durable,
            ">= 1.00",
        ),
        _target(
            r,
            "p99 Put at 1000 writes/s, ms",
            ("put_at_1000",),
            _get(r, "put_at_1000", "latency", "p99_ms"),
            "<= 5",
        ),
    ]
    for key, n, limit in (("fanout_1000", 1000, 100), ("fanout", 100, 20)):
        rate = _get(r, key, "delivery", "deliveries_per_s")
        lag = _get(r, key, "delivery", "commit_to_delivery", "p99_ms")
        want = f">= {0.95 * 200 * n:,.0f}"
        rows += [
            _target(r, f"fan-out {n} subscribers, deliveries/s", (key,), rate, want, "{:,.0f}"),
            _target(r, f"fan-out {n} subscribers, p99 lag ms", (key,), lag, f"<= {limit}"),
        ]
    for i, when in enumerate(("at once", "after the waiter waited")):
        p50 = _get(r, "coordination", "handoff", str(i), "server", "p50_ms")
        rows.append(_target(r, f"lock hand-off ({when}) p50, ms", ("coordination",), p50, "<= 10"))
    rss = _get(r, "idle_10000", "peak_rss_mib", "server")
    rows += [
        _target(r, "10,000 subscribers: server RSS, MiB", ("idle_10000",), rss, "<= 1024"),
        _target(
            r,
            "p99 Put, 100,000 / 1 conversations",
            ("conversations_100000",),
            conversations,
            "<= 1.20",
        ),
    ]
    return rows


def figures(r: dict[str, Any]) -> list[Row]:
    """Every figure the bench has always printed."""
    rows: list[Row] = []
    for name in ("echo", "echo_redis", "echo_commit", "put"):
        phase = r.get(name, {})
        if name.startswith("echo_") and name not in r:
            continue  # an older result
        if "achieved_per_s" not in phase:
            rows.append(Row(name, "ERROR" if name in r else "not run"))
            continue
        rows += [
            Row(f"{name} ops/s", f"{phase['achieved_per_s']:,.0f}"),
            Row(f"{name} p50 / p99 ms", _pair(phase["latency"])),
            Row(f"{name} server CPU us/op", f"{_cpu_per_op(phase, 'server'):.0f}"),
        ]
    put, echo = r.get("put", {}), r.get("echo", {})
    for name in ("echo_redis", "echo_commit", "put"):
        if "achieved_per_s" in r.get(name, {}):
            rows.append(Row(f"{name} redis CPU us/op", f"{_cpu_per_op(r[name], 'redis'):.0f}"))
    if "achieved_per_s" in put and "achieved_per_s" in echo:
        cost = _cpu_per_op(echo, "server") / _cpu_per_op(put, "server")
        rows.append(Row("echo / put server CPU per op", f"{cost:.2f}", "(same ratio by cost)"))
    # The floors under a Put (loadtest/echo.py), each against the echo.
    floors = (("echo_redis", "(+ one Redis call)"), ("echo_commit", "(+ the store's commit)"))
    for name, what in (*floors, ("put", "(the target's ratio)")):
        if "achieved_per_s" in r.get(name, {}) and "achieved_per_s" in echo:
            ratio = r[name]["achieved_per_s"] / echo["achieved_per_s"]
            rows.append(Row(f"{name} / echo QPS", f"{ratio:.2f}", what))
    if "put_at_1000" in r and "latency" in r["put_at_1000"]:
        rows.append(Row("put at 1000/s p50 / p99 ms", _pair(r["put_at_1000"]["latency"])))
    rows += _fanout_rows(r.get("fanout", {}))
    rows += _replica_rows(r)
    d = r.get("durable_put_sdk", {})
    for key in ("sdk_put", "sdk_writer_put", "etcd_put"):
        if key in d and "achieved_per_s" in d[key]:
            rows.append(
                Row(f"{key.replace('_', ' ')} ops/s (durable)", f"{d[key]['achieved_per_s']:,.0f}")
            )
    co = r.get("coordination", {})
    if "acquire_release" in co:
        rows.append(Row("lock acquire+release p50 / p99 ms", _pair(co["acquire_release"])))
        for case in co["handoff"]:
            when = f"after {case['settle_ms']} ms" if case["settle_ms"] else "at once"
            rows += [
                Row(f"lock hand-off ({when}) p50 / p99 ms", _pair(case["server"])),
                Row(f"etcd v3lock hand-off ({when}) p50/p99", _pair(case["etcd_v3lock"])),
                Row(
                    f"hand-off p50 server / v3lock ({when})",
                    f"{case['p50_ratio_server_to_v3lock']:.2f}",
                ),
            ]
    return rows


def _replica_rows(r: dict[str, Any]) -> list[Row]:
    """The replica phases (loadtest/replicas.py): writes/s by shape, fan-out across."""
    rows: list[Row] = []
    shapes = r.get("workers", {})
    for key, label in (
        ("one_process", "1 process"),
        ("two_replicas", "2 replicas"),
        ("workers_2", "--workers 2"),
    ):
        phase = shapes.get(key, {})
        if "achieved_per_s" in phase:
            rows.append(
                Row(
                    f"writes/s {label} (p50 / p99 ms)",
                    f"{phase['achieved_per_s']:,.0f} ({_pair(phase['latency'])})",
                )
            )
    d = r.get("fanout_replicas", {}).get("delivery")
    if d:
        rows.append(
            Row(
                "fan-out across replicas deliveries/s",
                f"{d['deliveries_per_s']:,.0f} (p50 / p99 {_pair(d['commit_to_delivery'])} ms)",
                "all, once, in order",
                r["fanout_replicas"]["check"]["passed"],
            )
        )
    return rows


def _fanout_rows(fan: dict[str, Any]) -> list[Row]:
    d = fan.get("delivery")
    if not d:
        return [Row("fan-out", "ERROR" if fan else "not run")]
    sent = fan.get("shape", {}).get("target_per_s", 200.0)
    done = fan["achieved_per_s"]
    checked = fan["check"]
    return [
        Row(
            "fan-out writes done/s",
            f"{done:.1f}",
            f">= {0.95 * sent:g} of {sent:g} sent",
            done >= 0.95 * sent,
        ),
        Row(
            "fan-out deliveries/s",
            f"{d['deliveries_per_s']:,.0f}",
            f"{sent * d['subscribers']:,.0f}",
        ),
        Row("fan-out events per stream msg", f"{d['events_per_message']:.2f}"),
        Row(
            "deliveries, every subscriber gapless",
            f"{d['deliveries']:,}",
            "all, once, in order",
            checked["passed"],
        ),
        Row("commit->delivery p50 / p99 ms", _pair(d["commit_to_delivery"])),
        Row("writer send->delivery p50/p99 ms", _pair(d["send_to_delivery"])),
        Row("writer put p50 / p99 ms (from intended)", _pair(fan["latency"])),
    ]


def _render(rows: list[Row]) -> str:
    cells = [
        [x.figure, x.value, x.target, "" if x.ok is None else ("pass" if x.ok else "MISS")]
        for x in rows
    ]
    return table(["figure", "value", "target", "result"], cells)


def print_bench(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(
        f"machine: {m['cores']} cores ({m['cores_usable']} usable), {m['cpu_model']}; "
        f"python {m['python']}, grpcio {m['grpcio']}; client loop: {r['client_loop']}; "
        f"histograms: {m['histogram']}"
    )
    print(
        f"machine busy before start: {r['machine_busy_before_start_pct']:g}% of one core "
        f"(waited {r['waited_for_quiet_s']:g} s for it to be quiet); client, servers, "
        "redis, etcd and subscribers all share these cores\n"
    )
    s = r["settings"]
    print(
        f"store: {r.get('redis', 'redis')} (no AOF but in durable_put_sdk); coordination: "
        f"{r.get('etcd', 'etcd')}\nunary phases: 64 in flight (closed loop), "
        f"{s['warmup']:g} s warm-up + {s['duration']:g} s measured; fan-out: 100 subscribers "
        f"in 2 processes, 1 writer at 200 puts/s open loop for {s['fanout_duration']:g} s; "
        f"locks: {s['lock_rounds']} acquire+release rounds, {s['lock_handoffs']} hand-offs per "
        f"case (released at once, or {s['lock_settle_ms']} ms after the waiter's claim is in "
        "etcd), v3lock in blocks interleaved with them\n"
    )
    print("targets (issue 5)\n" + _render(targets(r)))
    print("\nfigures\n" + _render(figures(r)))
    print()
    for name, phase in r.items():
        if not isinstance(phase, dict) or name in ("machine", "settings", "profile"):
            continue
        if "error" in phase:
            print(f"{name} error: {phase['error']}")
            continue
        cpu = phase.get("cpu_pct_of_one_core")
        if cpu:
            print(
                f"cpu during {name}, % of one core: "
                + ", ".join(f"{k} {v:g}" for k, v in cpu.items() if not math.isnan(v))
            )
            if cpu.get("other", 0.0) > NOISY_PCT:
                named = ", ".join(
                    f"{n} {p:g}%" for n, p in phase.get("busiest_other_processes", [])
                )
                print(
                    f"WARNING: during {name} something else used {cpu['other']:g}% of a core "
                    f"({named}): run again on a quiet machine"
                )
        if phase.get("errors"):
            print(f"{name} errors: {phase['errors']}")
        for problem in _get(phase, "check", "problems") or []:
            print(f"{name}: {problem}")
    for name, summary in r.get("profile", {}).items():
        print(
            f"\npy-spy during {name} ({summary['idle_pct']:g}% of samples idle), % of busy samples:"
        )
        for share, function in summary["own"][:8]:
            print(f"  {share:5.1f} {function[:90]}")
    if "server_died" in r:
        print(f"the server died:\n{r['server_died']}")
