"""`make bench`'s tables: the issue's targets (measured, pass or miss), then every
figure, then the context they were measured in (CPU of each process, others)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from loadtest.report import NOISY_PCT, table

HANDOFF_P50_MS = 10.0


@dataclass(frozen=True)
class Row:
    figure: str
    value: str
    target: str = ""
    ok: bool | None = None  # None: informational; a target row without a figure says why


def _get(r: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(r, dict) or key not in r:
            return None
        r = r[key]
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


def targets(r: dict[str, Any]) -> list[Row]:
    """The targets of issue 5, in its order; 'not run' says where a figure comes from."""
    rows: list[Row] = []
    echo, put = r.get("echo", {}), r.get("put", {})
    ratio = _ratio(put.get("achieved_per_s"), echo.get("achieved_per_s"))
    rows.append(Row("Put / echo QPS, 64 in flight", f"{ratio:.2f}", ">= 0.80", ratio >= 0.8))
    workers = r.get("workers")
    if workers and "ratio" in workers:
        ok = workers["ratio"] >= 1.3
        rows.append(Row("--workers 2 / one process", f"{workers['ratio']:.2f}", ">= 1.30", ok))
    else:
        rows.append(Row("--workers 2 / one process", "not run", ">= 1.30 (a 'workers' phase)"))
    d = r.get("durable_put_sdk", {})
    w = _ratio(_get(d, "sdk_put", "achieved_per_s"), _get(d, "etcd_put", "achieved_per_s"))
    rows.append(Row("SDK put (Redis fsync always) / etcd put", f"{w:.2f}", ">= 1.00", w >= 1.0))
    p99 = _get(r, "put_at_1000", "latency", "p99_ms")
    rows.append(_limit("p99 Put at 1000 writes/s, ms", p99, 5.0))
    for key, n, limit in (("fanout_1000", 1000, 100.0), ("fanout", 100, 20.0)):
        lag = _get(r, key, "delivery", "commit_to_delivery", "p99_ms")
        if key not in r:
            rows.append(
                Row(f"fan-out {n} subscribers p99 lag, ms", "not run", f"<= {limit:g} (--full)")
            )
            continue
        rows.append(_limit(f"fan-out {n} subscribers p99 lag, ms", lag, limit))
        rate = _get(r, key, "delivery", "deliveries_per_s") or 0.0
        want = 200 * n
        rows.append(
            Row(
                f"fan-out {n} deliveries/s",
                f"{rate:,.0f}",
                f">= {0.95 * want:,.0f}",
                rate >= 0.95 * want,
            )
        )
    for case in _get(r, "coordination", "handoff") or []:
        when = f"after {case['settle_ms']} ms" if case["settle_ms"] else "at once"
        rows.append(
            _limit(f"lock hand-off ({when}) p50, ms", case["server"]["p50_ms"], HANDOFF_P50_MS)
        )
    rss = _get(r, "idle_10000", "peak_rss_mib", "server")
    rows.append(
        _limit("10,000 idle subscribers: server RSS, MiB", rss, 1024.0)
        if rss is not None
        else Row("10,000 idle subscribers: server RSS, MiB", "not run", "<= 1024 (--full)")
    )
    one = _get(r, "conversations_100000", "one", "latency", "p99_ms")
    many = _get(r, "conversations_100000", "many", "latency", "p99_ms")
    if one and many:
        rows.append(
            Row(
                "p99 Put, 100,000 / 1 conversations",
                f"{many / one:.2f}",
                "<= 1.20",
                many / one <= 1.2,
            )
        )
    else:
        rows.append(Row("p99 Put, 100,000 / 1 conversations", "not run", "<= 1.20 (--full)"))
    return rows


def _limit(figure: str, value: float | None, limit: float) -> Row:
    if value is None or math.isnan(value):
        return Row(figure, "-", f"<= {limit:g}", False)
    return Row(figure, f"{value:.2f}", f"<= {limit:g}", value <= limit)


def figures(r: dict[str, Any]) -> list[Row]:
    """Every figure the bench has always printed."""
    rows: list[Row] = []
    for name in ("echo", "put"):
        phase = r.get(name, {})
        if "achieved_per_s" not in phase:
            rows.append(Row(name, "ERROR" if name in r else "not run"))
            continue
        rows += [
            Row(f"{name} ops/s", f"{phase['achieved_per_s']:,.0f}"),
            Row(f"{name} p50 / p99 ms", _pair(phase["latency"])),
            Row(f"{name} server CPU us/op", f"{_cpu_per_op(phase, 'server'):.0f}"),
        ]
    put, echo = r.get("put", {}), r.get("echo", {})
    if "achieved_per_s" in put:
        rows.append(Row("put redis CPU us/op", f"{_cpu_per_op(put, 'redis'):.0f}"))
    if "achieved_per_s" in put and "achieved_per_s" in echo:
        cost = _cpu_per_op(echo, "server") / _cpu_per_op(put, "server")
        rows.append(Row("echo / put server CPU per op", f"{cost:.2f}", "(same ratio by cost)"))
    if "put_at_1000" in r and "latency" in r["put_at_1000"]:
        rows.append(Row("put at 1000/s p50 / p99 ms", _pair(r["put_at_1000"]["latency"])))
    rows += _fanout_rows(r.get("fanout", {}))
    d = r.get("durable_put_sdk", {})
    for key in ("sdk_put", "etcd_put"):
        if key in d and "achieved_per_s" in d[key]:
            rows.append(
                Row(f"{key.replace('_', ' ')} ops/s (durable)", f"{d[key]['achieved_per_s']:,.0f}")
            )
    if _get(d, "etcd_put", "lag"):
        rows.append(Row("etcd put -> watch p50 / p99 ms", _pair(d["etcd_put"]["lag"])))
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
