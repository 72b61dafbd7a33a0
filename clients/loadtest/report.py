"""The summary table of a run (and of its baselines) on stdout."""

from __future__ import annotations

import json
import math
from typing import Any

NOISY_PCT = 25.0  # CPU of one core used by others during a run before we warn


def to_json(result: Any) -> str:
    """JSON with null where a figure is not a number (no samples): strict parsers
    such as jq reject NaN."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(result), indent=2, allow_nan=False) + "\n"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("-" * len(lines[0]))
    for r in rows:
        cells = [
            r[0].ljust(widths[0]),
            *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)),
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def ms(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def op_rows(ops: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, op in ops.items():
        lat = op["latency"]
        rows.append(
            [
                name,
                f"{op['ok']:,}",
                f"{op['achieved_per_s']:,.1f}",
                f"{sum(op['errors'].values()):,}",
                *(ms(lat[k]) for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")),
            ]
        )
    return rows


HEADER = ["operation", "ok", "per s", "errors", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"]


def print_run(result: dict[str, Any]) -> None:
    m, run = result["machine"], result["run"]
    shape = run["shape"]
    print(
        f"{run['scenario']} against {result['target']}; {m['cores']} cores, python {m['python']}, "
        f"grpcio {m['grpcio']}, client loop {result['client_loop']}"
    )
    mode = (
        f"open loop, target {shape['target_per_s']:g} steps/s"
        if shape["mode"] == "open"
        else f"closed loop, {shape['concurrency']} in flight"
    )
    print(
        f"{mode}; {run['conversations']} conversation(s), "
        f"{run['subscribers_per_conversation']} subscriber(s) each; "
        f"{shape['warmup_s']:g} s warm-up + {run['measured_s']:g} s measured"
    )
    target = run["steps_target_per_s"]
    achieved = run["steps_achieved_per_s"]
    versus = f" of {target:g} targeted ({achieved / target:.0%})" if target else ""
    print(f"steps completed: {achieved:,.1f}/s{versus}\n")
    print(table(HEADER, op_rows(run["ops"])))
    for name, op in run["ops"].items():
        if op["errors"]:
            print(f"errors of {name}: " + ", ".join(f"{k} {v}" for k, v in op["errors"].items()))
    for failure in run["failures"]:
        print(f"  first errors: {failure}")
    if "schedule_delay" in run:
        d = run["schedule_delay"]
        print(f"\nsends late against schedule: p50 {ms(d['p50_ms'])} ms, p99 {ms(d['p99_ms'])} ms")
    if "delivery" in run:
        print_delivery(run["delivery"])
    if "cpu_pct_of_one_core" in run:
        cpu = ", ".join(f"{k} {v:g}" for k, v in run["cpu_pct_of_one_core"].items())
        rss = ", ".join(f"{k} {v:g}" for k, v in run["peak_rss_mib"].items())
        print(f"\nCPU, % of one core: {cpu}\npeak RSS, MiB: {rss}")
        other = run["cpu_pct_of_one_core"].get("other", 0.0)
        if other > NOISY_PCT:
            named = ", ".join(f"{n} {p:g}%" for n, p in run.get("busiest_other_processes", []))
            print(f"WARNING: something else used {other:g}% of a core ({named}): run again quietly")
    for key, value in run.items():
        if key.startswith("tasks_"):
            print(f"{key.replace('_', ' ')}: {value:,}")
    print_check(run["check"])
    if "server_died" in run:
        print(f"\nTHE SERVER DIED:\n{run['server_died']}")
    if "compare" in result:
        print_compare(run, result["compare"])


def print_delivery(d: dict[str, Any]) -> None:
    print(
        f"\ndelivery to {d['subscribers']} subscribers: {d['deliveries']:,} events, "
        f"{d['deliveries_per_s']:,.0f}/s, {d['events_per_message']:.2f} events per stream message"
    )
    rows = [
        [label, *(ms(d[key][k]) for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"))]
        for label, key in (
            ("commit -> delivery", "commit_to_delivery"),
            ("send -> delivery", "send_to_delivery"),
            ("intended send -> delivery", "intended_send_to_delivery"),
        )
    ]
    print(table(["lag", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"], rows))


def print_check(c: dict[str, Any]) -> None:
    what = ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in c["checked"].items())
    print(f"\ncorrectness check: {'PASSED' if c['passed'] else 'FAILED'} ({what})")
    for problem in c["problems"]:
        print(f"  {problem}")


def print_compare(run: dict[str, Any], compare: dict[str, Any]) -> None:
    print("\nbaselines, same shape (ratio = Blackboard / baseline):")
    ours = max(run["ops"].values(), key=lambda op: op["ok"], default=None)
    lag = _get_lag(run)
    rows = []
    for name, base in compare.items():
        if "error" in base:
            rows.append([name, "ERROR", "", "", "", base["error"][:60]])
            continue
        lat = base["latency"]
        rate = _div(ours["achieved_per_s"] if ours else None, base["achieved_per_s"])
        p99 = _div(ours["latency"]["p99_ms"] if ours else None, lat["p99_ms"])
        figures = [f"{base['achieved_per_s']:,.1f}", ms(lat["p50_ms"]), ms(lat["p99_ms"])]
        rows.append([name, *figures, f"{rate:.2f}", f"{p99:.2f}"])
        if "lag" in base:  # Blackboard's send -> delivery against etcd's put -> watch
            watch = base["lag"]
            ratio = _div(lag["p99_ms"] if lag else None, watch["p99_ms"])
            figures = ["", ms(watch["p50_ms"]), ms(watch["p99_ms"]), ""]
            rows.append([f"{name} watch lag", *figures, f"{ratio:.2f}"])
    print(table(["baseline", "per s", "p50 ms", "p99 ms", "rate ratio", "p99 ratio"], rows))


def _get_lag(run: dict[str, Any]) -> dict[str, Any] | None:
    """Subscribers' lag from the writer's send: what etcd's put -> watch compares with."""
    lag: dict[str, Any] | None = run.get("delivery", {}).get("send_to_delivery")
    return lag


def _div(a: float | None, b: float | None) -> float:
    return a / b if a and b else math.nan
