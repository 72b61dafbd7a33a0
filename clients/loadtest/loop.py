"""How load is offered: closed loop (N workers back to back) or open loop (a rate).

Open loop: step i is due at t0 + i/rate whatever happened to the earlier ones,
and its latency counts from that intended time, so a stall of the server (or of
this client) shows up as latency instead of quietly lowering the rate: the
coordinated-omission trap. `intended_ns` and `open_loop_latency_us` are the
whole of that arithmetic, unit-tested without an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from blackboard_client import BlackboardError
from loadtest.stats import Latencies, OpStats

T = TypeVar("T")
Step = Callable[[int, int, int], Awaitable[None]]  # (worker, sequence, start_ns) -> None


def intended_ns(t0_ns: int, i: int, rate: float) -> int:
    """When step i of an open loop at `rate` per second is due."""
    return t0_ns + round(i * 1e9 / rate)


def open_loop_latency_us(intended: int, sent: int, done: int) -> tuple[int, int]:
    """(latency from the intended send time, how late the send was), microseconds."""
    return (done - intended) // 1000, max(0, sent - intended) // 1000


def error_code(error: BaseException) -> str:
    """A status code name for any error a call raised (gRPC, the SDK, or other)."""
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code().name
    if isinstance(error, BlackboardError):  # the SDK's: the status the server sent
        return str(error.status)
    if isinstance(error, TimeoutError):
        return "DEADLINE_EXCEEDED"
    return type(error).__name__


@dataclass
class Shape:
    """The load: how many in flight, or at what rate, for how long, at most how much."""

    concurrency: int = 16
    rate: float = 0.0  # 0: closed loop
    duration_s: float = 10.0
    warmup_s: float = 0.0
    requests: int = 0  # 0: bounded by the duration alone
    max_in_flight: int = 10_000  # open loop: steps waiting beyond this are late, not lost

    @property
    def open(self) -> bool:
        return self.rate > 0

    def describe(self) -> dict[str, Any]:
        return {
            "mode": "open" if self.open else "closed",
            "concurrency": self.concurrency,
            "target_per_s": self.rate,
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
            "requests": self.requests,
        }


class Recorder:
    """Per-operation stats for one run; calls made during warm-up are not counted."""

    def __init__(self) -> None:
        self.ops: dict[str, OpStats] = {}
        self.schedule_delay = Latencies()  # open loop: how late sends left
        self.t0_ns = time.monotonic_ns()
        self.measure_from_ns = 1 << 62  # nothing counts before start(): setup is not load
        # Rates count completions up to here; latencies count later ones too (a backlog
        # drained after the window is latency, not throughput).
        self.measure_until_ns = 1 << 62
        self.failures: list[str] = []  # unexpected errors, the first few
        self.steps = 0  # steps completed without an error while measuring

    def start(self, warmup_s: float, duration_s: float) -> None:
        self.t0_ns = time.monotonic_ns()
        self.measure_from_ns = self.t0_ns + int(warmup_s * 1e9)
        self.measure_until_ns = self.measure_from_ns + int(duration_s * 1e9)

    def _second(self, now: int) -> int:
        return max(0, (now - self.measure_from_ns) // 1_000_000_000)

    def stats(self, op: str) -> OpStats:
        found = self.ops.get(op)
        if found is None:
            found = self.ops[op] = OpStats()
        return found

    def ok(self, op: str, start_ns: int, end_ns: int) -> None:
        if end_ns >= self.measure_from_ns:
            in_window = end_ns <= self.measure_until_ns
            self.stats(op).ok(self._second(end_ns), (end_ns - start_ns) // 1000, in_window)

    def error(self, op: str, error: BaseException) -> None:
        now = time.monotonic_ns()
        if now >= self.measure_from_ns:
            self.stats(op).error(self._second(now), error_code(error))
        if len(self.failures) < 5:
            self.failures.append(f"{op}: {error_code(error)}: {error}"[:300])

    async def timed(
        self,
        op: str,
        call: Awaitable[T],
        since_ns: int = 0,
        expected: tuple[grpc.StatusCode, ...] = (),
    ) -> T:
        """Awaits `call`, recording its latency (from `since_ns` when given) or its error.

        An error whose code is `expected` (a lock that is held, a version that
        moved on) is an outcome, not a failure: it is timed as "op (CODE)".
        """
        start = since_ns or time.monotonic_ns()
        try:
            result = await call
        except asyncio.CancelledError:
            raise
        except Exception as error:
            code = error_code(error)
            if any(code == e.name for e in expected):
                self.ok(f"{op} ({code})", start, time.monotonic_ns())
            else:
                self.error(op, error)
            raise
        self.ok(op, start, time.monotonic_ns())
        return result

    def completed(self) -> int:
        return sum(s.latency.count for s in self.ops.values())

    def errored(self) -> int:
        return sum(sum(s.errors.values()) for s in self.ops.values())


async def run_steps(
    shape: Shape, step: Step, recorder: Recorder, *, progress: bool, exclusive: bool = False
) -> float:
    """Offers `step` as `shape` says; returns the measured seconds (warm-up excluded).

    Open loop gives step i to worker i mod N. With `exclusive`, a worker runs one
    step at a time (an agent with one session does one thing at once): a step due
    while its worker is busy waits, and the wait counts in its latency.
    """
    recorder.start(shape.warmup_s, shape.duration_s)
    end_ns = recorder.t0_ns + int((shape.warmup_s + shape.duration_s) * 1e9)
    ticker = asyncio.create_task(_progress(recorder, shape)) if progress else None
    try:
        if shape.open:
            await _open_loop(shape, step, end_ns, recorder, exclusive)
        else:
            await _closed_loop(shape, step, end_ns, recorder)
    finally:
        if ticker is not None:
            ticker.cancel()
            print(file=sys.stderr)
    measured_ns = time.monotonic_ns() - recorder.measure_from_ns
    return max(1e-3, min(measured_ns, int(shape.duration_s * 1e9)) / 1e9)


async def _safe(step: Step, worker: int, seq: int, start_ns: int, recorder: Recorder) -> None:
    """Errors are already recorded by `Recorder.timed`; a step carries on after one."""
    try:
        await step(worker, seq, start_ns)
    except asyncio.CancelledError:
        raise
    except Exception as error:
        if not isinstance(error, grpc.aio.AioRpcError) and len(recorder.failures) < 5:
            recorder.failures.append(f"step: {type(error).__name__}: {error}"[:300])
        return
    if recorder.measure_from_ns <= time.monotonic_ns() <= recorder.measure_until_ns:
        recorder.steps += 1


async def _closed_loop(shape: Shape, step: Step, end_ns: int, recorder: Recorder) -> None:
    issued = 0

    async def worker(w: int) -> None:
        nonlocal issued
        seq = 0
        while time.monotonic_ns() < end_ns and not (shape.requests and issued >= shape.requests):
            issued += 1
            await _safe(step, w, seq, time.monotonic_ns(), recorder)
            seq += 1

    await asyncio.gather(*(worker(w) for w in range(shape.concurrency)))


async def _open_loop(
    shape: Shape, step: Step, end_ns: int, recorder: Recorder, exclusive: bool
) -> None:
    t0 = time.monotonic_ns()
    count = int(shape.rate * (shape.duration_s + shape.warmup_s))
    if shape.requests:
        count = min(count, shape.requests)
    slots = asyncio.Semaphore(shape.max_in_flight)
    workers = [asyncio.Lock() for _ in range(shape.concurrency)] if exclusive else []
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int, due: int) -> None:
        worker = workers[i % shape.concurrency] if workers else contextlib.nullcontext()
        async with slots, worker:
            sent = time.monotonic_ns()
            if sent >= recorder.measure_from_ns:
                recorder.schedule_delay.add(open_loop_latency_us(due, sent, sent)[1])
            await _safe(step, i % shape.concurrency, i, due, recorder)

    for i in range(count):
        due = intended_ns(t0, i, shape.rate)
        if due >= end_ns:
            break
        wait = due - time.monotonic_ns()
        if wait > 0:
            await asyncio.sleep(wait / 1e9)
        task = asyncio.create_task(one(i, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)


async def _progress(recorder: Recorder, shape: Shape) -> None:
    """One line on stderr, rewritten once a second."""
    last = 0
    while True:
        await asyncio.sleep(1.0)
        done = recorder.completed()
        elapsed = (time.monotonic_ns() - recorder.t0_ns) / 1e9
        worst = max((s.latency.percentile_ms(99) for s in recorder.ops.values()), default=0.0)
        phase = "warm-up" if time.monotonic_ns() < recorder.measure_from_ns else "measuring"
        print(
            f"\r{elapsed:6.1f}s/{shape.warmup_s + shape.duration_s:g}s {phase}: "
            f"{done - last:7,d} ops/s  {recorder.errored():,d} errors  p99 {worst:.2f} ms   ",
            end="",
            file=sys.stderr,
            flush=True,
        )
        last = done
