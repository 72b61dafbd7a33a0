"""Latency histograms, errors by status code, and per-second timelines."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

try:  # HdrHistogram when it is installed; exact percentiles of sorted samples otherwise.
    from hdrh.histogram import HdrHistogram
except ImportError:  # pragma: no cover - depends on the environment
    HdrHistogram = None

HDR = HdrHistogram is not None
MAX_US = 60_000_000  # a minute: anything slower is clamped, and counted as such
PERCENTILES = (("p50_ms", 50.0), ("p90_ms", 90.0), ("p99_ms", 99.0), ("p999_ms", 99.9))


class Latencies:
    """Latencies recorded in microseconds; percentiles reported in milliseconds."""

    def __init__(self) -> None:
        self._hist = HdrHistogram(1, MAX_US, 3) if HdrHistogram is not None else None
        self._samples: list[int] = []
        self.count = 0
        self.clamped = 0
        self.max_us = 0

    def add(self, us: int) -> None:
        us = max(1, us)
        if us > MAX_US:
            self.clamped += 1
            us = MAX_US
        self.count += 1
        self.max_us = max(self.max_us, us)
        if self._hist is not None:
            self._hist.record_value(us)
        else:
            self._samples.append(us)

    def extend(self, values: Iterable[int]) -> None:
        for us in values:
            self.add(us)

    def percentile_ms(self, p: float) -> float:
        if not self.count:
            return math.nan
        if self._hist is not None:  # a bucket's upper end: never report more than the max
            return min(int(self._hist.get_value_at_percentile(p)), self.max_us) / 1000
        self._samples.sort()
        rank = max(0, min(self.count - 1, math.ceil(p / 100 * self.count) - 1))
        return self._samples[rank] / 1000

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count}
        for name, p in PERCENTILES:
            out[name] = round(self.percentile_ms(p), 3)
        out["max_ms"] = round(self.max_us / 1000, 3)
        if self.clamped:
            out["clamped"] = self.clamped
        return out

    def buckets(self, count: int = 40) -> list[tuple[float, int]]:
        """(upper bound ms, samples) on a log scale from 10 us to the max: the histogram plot."""
        if not self.count:
            return []
        top = max(self.max_us, 20)
        edges = [10 * (top / 10) ** (i / count) for i in range(1, count + 1)]
        counts = [0] * count
        if self._hist is not None:
            for item in self._hist.get_recorded_iterator():
                slot = bisect.bisect_left(edges, item.value_iterated_to)
                counts[min(count - 1, slot)] += item.count_added_in_this_iter_step
        else:
            for us in self._samples:
                counts[min(count - 1, bisect.bisect_left(edges, us))] += 1
        return [(round(e / 1000, 3), n) for e, n in zip(edges, counts, strict=True)]


@dataclass
class Second:
    """One second of one operation: completions, errors, and latency samples."""

    ok: int = 0
    errors: int = 0
    samples: list[int] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        lat = sorted(self.samples)

        def pick(p: float) -> float:
            return lat[max(0, math.ceil(p * len(lat)) - 1)] / 1000 if lat else math.nan

        return {
            "ok": self.ok,
            "errors": self.errors,
            "p50_ms": round(pick(0.5), 3),
            "p99_ms": round(pick(0.99), 3),
            "max_ms": round(lat[-1] / 1000, 3) if lat else math.nan,
        }


class OpStats:
    """Everything recorded for one operation (put, get, acquire, ...)."""

    def __init__(self) -> None:
        self.latency = Latencies()
        self.in_window = 0  # completions within the measured window: the rate
        self.errors: dict[str, int] = {}
        self.seconds: dict[int, Second] = {}

    def ok(self, second: int, us: int, in_window: bool = True) -> None:
        self.latency.add(us)
        self.in_window += in_window
        slot = self.seconds.setdefault(second, Second())
        slot.ok += 1
        slot.samples.append(us)

    def error(self, second: int, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1
        self.seconds.setdefault(second, Second()).errors += 1

    def summary(self, seconds: float) -> dict[str, Any]:
        last = max(self.seconds, default=-1)
        return {
            "ok": self.latency.count,
            "errors": dict(sorted(self.errors.items())),
            "achieved_per_s": round(self.in_window / seconds, 1) if seconds > 0 else 0.0,
            "latency": self.latency.summary(),
            "histogram": self.latency.buckets(),
            "timeline": [self.seconds.get(s, Second()).row() for s in range(last + 1)],
        }
