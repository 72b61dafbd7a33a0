"""bb-loadtest's pure parts: open-loop scheduling, the correctness check, histograms."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from blackboard_client import Fenced, Unavailable
from loadtest.check import Ledger, Observed, check
from loadtest.loop import (
    Recorder,
    Shape,
    error_code,
    intended_ns,
    open_loop_latency_us,
    run_steps,
)
from loadtest.report import to_json
from loadtest.stats import Latencies


def test_open_loop_steps_are_due_at_fixed_intervals_from_t0() -> None:
    assert [intended_ns(1_000, i, 1000.0) for i in range(4)] == [
        1_000,
        1_001_000,
        2_001_000,
        3_001_000,
    ]
    assert intended_ns(0, 3, 3.0) == 1_000_000_000


def test_open_loop_latency_includes_the_time_a_send_waited_behind_a_stall() -> None:
    # Step due at 10 ms; the loop stalled, so it left at 50 ms and completed at 51 ms.
    latency, late = open_loop_latency_us(10_000_000, 50_000_000, 51_000_000)
    assert (latency, late) == (41_000, 40_000)
    # On time: the latency is the service time alone.
    assert open_loop_latency_us(10_000_000, 10_000_000, 11_000_000) == (1_000, 0)


def stream(conv: str, **kw: Any) -> dict[str, Any]:
    return {
        "conversation": conv,
        "last": 10,
        "missing": 0,
        "duplicates": 0,
        "resets": 0,
        "error": "",
    } | kw


def sound() -> tuple[Ledger, Observed]:
    ledger = Ledger()
    ledger.put("c", "a", 3)
    ledger.put("c", "a", 5)
    ledger.appended("c", "log", "log/7", 7)
    ledger.counters[("c", "n")] = 0
    ledger.incremented("c", "n", 9)
    ledger.incremented("c", "n", 10)
    seen = Observed(
        mod_revisions={("c", "a"): 5, ("c", "n"): 10},
        children={("c", "log"): {"log/7"}},
        counters={("c", "n"): 2},
        heads={"c": 10},
    )
    return ledger, seen


def test_the_check_passes_when_everything_acknowledged_is_there() -> None:
    ledger, seen = sound()
    verdict = check(ledger, seen, [stream("c")])
    assert verdict.ok and verdict.problems == []
    assert verdict.checked == {
        "acknowledged_keys": 2,
        "appended_children": 1,
        "counters": 1,
        "subscribers": 1,
    }


def test_the_check_finds_each_kind_of_problem() -> None:
    ledger, seen = sound()
    seen.mod_revisions.pop(("c", "a"))
    seen.children[("c", "log")] = set()
    seen.counters[("c", "n")] = 1
    verdict = check(ledger, seen, [stream("c", missing=1), stream("c", last=8)])
    assert not verdict.ok
    text = "\n".join(verdict.problems)
    assert "lost write: c/a acknowledged at 5, now absent" in text
    assert "lost appends under c/log: 1" in text
    assert "counter c/n is 1, 2 increments acknowledged" in text
    assert "subscriber 0 of c: 1 skipped" in text
    assert "subscriber 1 of c: 0 skipped, 2 never received" in text
    assert len(verdict.problems) == 5


def test_a_key_behind_its_acknowledged_revision_is_lost_but_a_failed_write_may_land() -> None:
    ledger, seen = sound()
    seen.mod_revisions[("c", "a")] = 4
    assert not check(ledger, seen, []).ok
    seen.mod_revisions[("c", "a")] = 6  # a later write the client never heard back from
    assert not check(ledger, seen, []).ok
    ledger.failed("c", "a")
    assert check(ledger, seen, []).ok


def test_percentiles_are_ordered_and_never_above_the_max() -> None:
    lat = Latencies()
    lat.extend(range(1, 10_001))
    s = lat.summary()
    values = [s[k] for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")]
    assert values == sorted(values)
    assert s["max_ms"] == 10.0 and abs(s["p50_ms"] - 5.0) < 0.01
    assert sum(n for _, n in lat.buckets()) == 10_000


async def test_a_stall_shows_in_open_loop_latency_instead_of_lowering_the_rate() -> None:
    """The loop is blocked for 300 ms at step 5: steps due meanwhile leave late, and
    their latency counts from when they were due, not from when they left."""
    rec = Recorder()

    async def step(worker: int, seq: int, start_ns: int) -> None:
        if seq == 5:
            time.sleep(0.3)  # noqa: ASYNC251  (the point: a stall of the whole client)
        await rec.timed("op", asyncio.sleep(0), start_ns)

    await run_steps(Shape(concurrency=1, rate=100.0, duration_s=0.6), step, rec, progress=False)
    lat = rec.stats("op").latency
    assert lat.count == 60  # every step due within the duration ran
    assert lat.max_us >= 250_000  # the first step due after the stall waited ~290 ms
    assert rec.schedule_delay.max_us >= 250_000


async def test_closed_loop_stops_after_the_request_bound() -> None:
    rec = Recorder()

    async def step(worker: int, seq: int, start_ns: int) -> None:
        await rec.timed("op", asyncio.sleep(0), start_ns)

    await run_steps(Shape(concurrency=4, duration_s=30.0, requests=10), step, rec, progress=False)
    assert rec.steps == rec.stats("op").latency.count == 10


async def most_steps_of_one_worker_at_once(exclusive: bool) -> int:
    """Open loop, 2 workers, a step every 10 ms, each step taking 50 ms."""
    busy, peak = [0, 0], [0, 0]

    async def step(worker: int, seq: int, start_ns: int) -> None:
        busy[worker] += 1
        peak[worker] = max(peak[worker], busy[worker])
        await asyncio.sleep(0.05)
        busy[worker] -= 1

    shape = Shape(concurrency=2, rate=100.0, duration_s=0.3)
    await run_steps(shape, step, Recorder(), progress=False, exclusive=exclusive)
    return max(peak)


async def test_open_loop_workers_of_exclusive_scenarios_do_one_step_at_a_time() -> None:
    assert await most_steps_of_one_worker_at_once(exclusive=True) == 1
    assert await most_steps_of_one_worker_at_once(exclusive=False) >= 2


def test_json_output_has_null_where_a_figure_is_not_a_number() -> None:
    empty = Latencies().summary()
    text = to_json({"latency": empty, "rows": [(1.0, float("inf"))]})
    parsed = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert parsed == {
        "latency": {
            "count": 0,
            "p50_ms": None,
            "p90_ms": None,
            "p99_ms": None,
            "p999_ms": None,
            "max_ms": 0.0,
        },
        "rows": [[1.0, None]],
    }


def test_errors_are_counted_by_status_code_whoever_raised_them() -> None:
    assert error_code(Fenced("newer token")) == "FAILED_PRECONDITION"
    assert error_code(Unavailable("down", status="UNKNOWN")) == "UNKNOWN"  # what was sent
    assert error_code(TimeoutError()) == "DEADLINE_EXCEEDED"
    assert error_code(ValueError("bad")) == "ValueError"


def test_a_call_completing_after_the_window_counts_in_latency_not_in_the_rate() -> None:
    rec = Recorder()
    rec.start(warmup_s=0.0, duration_s=1.0)
    inside = rec.measure_from_ns + 500_000_000
    rec.ok("put", inside - 2_000_000, inside)  # 2 ms, within the window
    late = rec.measure_until_ns + 300_000_000
    rec.ok("put", late - 400_000_000, late)  # 400 ms, completed after it
    summary = rec.stats("put").summary(1.0)
    assert summary["ok"] == 2 and summary["achieved_per_s"] == 1.0
    assert summary["latency"]["max_ms"] == 400.0
    assert [row["ok"] for row in summary["timeline"]] == [1, 1]
