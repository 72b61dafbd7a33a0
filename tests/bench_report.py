"""The benchmark's table: figures, targets, pass/fail, and the context they were measured in."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

NOISY_PCT = 25.0  # CPU of one core used by others during a phase before we warn
HANDOFF_P50_MS = 10.0  # the roadmap's target for a lock hand-off through the server
PHASES = ("echo", "put", "fanout", "coordination")


@dataclass(frozen=True)
class Row:
    figure: str
    value: str
    target: str = ""
    ok: bool | None = None  # None: informational


def rows(r: dict[str, Any]) -> list[Row]:
    return [
        *_unary_rows(r["echo"], r.get("put", {})),
        *_fanout_rows(r.get("fanout", {})),
        *_coordination_rows(r.get("coordination", {})),
    ]


def _unary_rows(echo: dict[str, Any], put: dict[str, Any]) -> list[Row]:
    table: list[Row] = []
    for name, phase in (("echo", echo), ("put", put)):
        if "ops_per_s" not in phase:
            table.append(Row(f"{name}", "ERROR", "runs", False))
            continue
        table += [
            Row(f"{name} ops/s", f"{phase['ops_per_s']:,.0f}"),
            Row(f"{name} p50 / p99 ms", _pair(phase["latency"])),
            Row(f"{name} server CPU us/op", _per_op(phase, "server")),
        ]
    if "ops_per_s" in put:
        table.append(Row("put redis CPU us/op", _per_op(put, "redis")))
    if "ops_per_s" in put and "ops_per_s" in echo:
        ratio = put["ops_per_s"] / echo["ops_per_s"] if echo["ops_per_s"] else math.nan
        table.append(Row("put / echo ops ratio", f"{ratio:.2f}", ">= 0.80", ratio >= 0.8))
        # The server's CPU per request moves less with other load on the machine than
        # throughput does: what ratio the server alone would allow.
        cost = _cpu_per_op(echo, "server") / _cpu_per_op(put, "server")
        table.append(Row("echo / put server CPU per op", f"{cost:.2f}", "(same ratio by cost)"))
    return table


def _fanout_rows(fan: dict[str, Any]) -> list[Row]:
    if "deliveries" not in fan:
        return [Row("fan-out", "ERROR", "runs", False)]
    lat = fan["commit_to_delivery"]
    gapless = fan["streams_with_problems"] == 0 and fan["deliveries"] == fan["deliveries_expected"]
    expected_rate = fan["intended_writes_per_s"] * fan["subscribers"]
    per_message = fan["deliveries"] / max(1, fan["stream_messages"])
    intended = fan["intended_writes_per_s"]
    done = fan["writes_completed_in_window_per_s"]
    return [
        Row(
            "fan-out writes done in window/s",
            f"{done:.1f}",
            f">= {0.95 * intended:g} of {intended:g} sent",
            done >= 0.95 * intended,
        ),
        Row(
            "fan-out backlog drained after s", f"{fan['write_backlog_drained_after_window_s']:.2f}"
        ),
        Row("fan-out deliveries/s", f"{fan['deliveries_per_s']:,.0f}", f"{expected_rate:,.0f}"),
        Row("fan-out events per stream msg", f"{per_message:.2f}"),
        Row(
            "deliveries received / expected",
            f"{fan['deliveries']:,} / {fan['deliveries_expected']:,}",
            "all, once, in order",
            gapless,
        ),
        Row("commit->delivery p50 / p99 ms", _pair(lat), "p99 <= 50", lat["p99_ms"] <= 50),
        Row("writer send->delivery p50/p99 ms", _pair(fan["send_to_delivery"])),
        Row("writer put p50 / p99 ms", _pair(fan["put_latency_from_intended_send"])),
    ]


def _coordination_rows(co: dict[str, Any]) -> list[Row]:
    if "acquire_release" not in co:
        return [Row("coordination", "ERROR", "runs", False)]
    table = [Row("lock acquire+release p50 / p99 ms", _pair(co["acquire_release"]))]
    for case in co["handoff"]:
        when = f"after {case['settle_ms']} ms" if case["settle_ms"] else "at once"
        server = case["server"]
        table += [
            Row(
                f"lock hand-off ({when}) p50 / p99 ms",
                _pair(server),
                f"p50 <= {HANDOFF_P50_MS:g}",
                server["p50_ms"] <= HANDOFF_P50_MS,
            ),
            Row(f"etcd v3lock hand-off ({when}) p50/p99", _pair(case["etcd_v3lock"])),
            Row(
                f"hand-off p50 server / v3lock ({when})",
                f"{case['p50_ratio_server_to_v3lock']:.2f}",
            ),
        ]
    return table


def _pair(summary: dict[str, float | int]) -> str:
    return f"{summary['p50_ms']:.2f} / {summary['p99_ms']:.2f}"


def _per_op(phase: dict[str, Any], process: str) -> str:
    us = _cpu_per_op(phase, process)
    return "-" if math.isnan(us) else f"{us:.0f}"


def _cpu_per_op(phase: dict[str, Any], process: str) -> float:
    pct = phase["cpu_pct_of_one_core"].get(process, math.nan)
    if math.isnan(pct) or not phase["ops_per_s"]:
        return math.nan
    return float(pct / 100 * 1e6 / phase["ops_per_s"])


def print_table(r: dict[str, Any], table: list[Row]) -> None:
    m, s = r["machine"], r["settings"]
    print(
        f"machine: {m['cores']} cores ({m['cores_usable']} usable), {m['cpu_model']}; "
        f"python {m['python']}, grpcio {m['grpcio']}; client loop: {r['client_loop']}"
    )
    print(
        f"store: {r['store']} ({r.get('redis', 'in-memory, embedded mode')}, no AOF); "
        "client, server, redis and subscribers all share these cores"
    )
    print(
        f"unary: {s['concurrency']} in flight (closed loop) over {s['channels']} channel(s), "
        f"{s['warmup']:g} s warm-up + {s['duration']:g} s measured"
    )
    print(
        f"fan-out: {s['subscribers']} subscribers in {s['fanout_procs']} processes, "
        f"{s['fanout_channels']} channels each; 1 writer, {s['rate']:g} puts/s open loop "
        f"for {s['fanout_duration']:g} s; histograms: {m['histogram']}"
    )
    co = r.get("coordination", {})
    print(
        f"coordination: a second server on {r['store']} + {co.get('etcd', 'etcd')}; "
        f"{s['lock_rounds']} acquire+release rounds; {s['lock_handoffs']} hand-offs per case, "
        f"the holder releasing at once or {s['lock_settle_ms']} ms after the waiter's claim is "
        "in etcd; v3lock in blocks interleaved with them"
    )
    print(
        f"machine busy before start: {r['machine_busy_before_start_pct']:g}% of one core "
        f"(waited {r['waited_for_quiet_s']:g} s for it to be quiet)"
    )
    print()
    widths = [
        max(len("figure"), *(len(x.figure) for x in table)),
        max(len("value"), *(len(x.value) for x in table)),
        max(len("target"), *(len(x.target) for x in table)),
    ]
    header = "  ".join(
        h.ljust(w) for h, w in zip(("figure", "value", "target"), widths, strict=True)
    )
    print(header + "  result")
    print("-" * (len(header) + 8))
    for x in table:
        result = "" if x.ok is None else ("PASS" if x.ok else "FAIL")
        print(
            f"{x.figure.ljust(widths[0])}  {x.value.rjust(widths[1])}  "
            f"{x.target.ljust(widths[2])}  {result}".rstrip()
        )
    print()
    for name in PHASES:
        phase = r.get(name, {})
        if "error" in phase:
            print(f"{name} error: {phase['error']}")
            continue
        if "cpu_pct_of_one_core" in phase:
            print(f"cpu during {name}, % of one core: {_cpu(phase['cpu_pct_of_one_core'])}")
        for key in ("errors", "write_errors"):
            if phase.get(key):
                print(f"{name} {key.replace('_', ' ')}: {phase[key]}")
        for problem in phase.get("problems", []):
            print(f"{name}: {problem}")
    for name, summary in r.get("profile", {}).items():
        print(
            f"\npy-spy {name} ({summary['idle_pct']:g}% of samples idle), % of busy samples: "
            "running the function | under the function"
        )
        for left, right in itertools.zip_longest(summary["own"][:8], summary["inclusive"][:8]):
            print(f"  {_cell(left):66}  | {_cell(right)}".rstrip())
    for name in PHASES:
        other = r.get(name, {}).get("cpu_pct_of_one_core", {}).get("other", 0.0)
        if other > NOISY_PCT:
            print(
                f"WARNING: during {name} something else used {other:g}% of a core "
                "(other processes on this machine, or the kernel): the figures above are "
                "lower than this code can do; run again on a quiet machine"
            )
            busiest = r[name].get("busiest_other_processes", [])
            named = ", ".join(f"{n} {p:g}%" for n, p in busiest)
            print(f"  busiest others: {named or 'none lived through the phase'}")
    for where in (r, r.get("coordination", {})):
        if "server_died" in where:
            print(f"the server died:\n{where['server_died']}")


def _cell(item: tuple[float, str] | None) -> str:
    return "" if item is None else f"{item[0]:5.1f} {item[1][:60]}"


def _cpu(used: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in used.items() if not math.isnan(v))
