"""Checks a recorded history (history.py) against what the store promises.

The change stream is the witness: every subscriber's deliveries, merged by
conversation and revision, are the log. The rules, each with the name its
violations carry:

- `stream-disagree`: two subscribers delivered different changes at one revision.
- `revision-reused`: two acknowledged writes got the same revision.
- `lost`: an acknowledged write is not in the log at its revision (or not at all).
- `duplicated`: a write's value appears at more than one revision (applied twice).
- `failed-applied`: a write that failed for certain appears in the log.
- `version`: a key's versions in the log do not go 1, 2, 3 … (restarting after a
  delete), or an acknowledged write's version is not the one in the log.
- `cas`: a compare-and-set succeeded with a version other than expected + 1, or
  failed while the version it expected was current.
- `realtime`: a write acknowledged before another was invoked got the higher
  revision; or a read returned a version older than a write acknowledged before
  the read began, or a write that began after the read ended, or a value that
  is not the one the log has at the revision read.
- `order` / `gap` / `duplicate-delivery`: a subscriber's revisions do not go
  start, start + 1, … one by one.
- `incomplete`: a subscriber stopped before the last acknowledged revision of
  its conversation, or ended with an error.

Unknown outcomes (and operations with none) may have happened: their value may
appear once, or not at all. A check that takes longer than its timeout is a
failed verdict.
"""

from __future__ import annotations

import concurrent.futures
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.checker.history import Record, load

WRITES = ("put", "cas", "delete")
Change = tuple[str, str | None, int]  # key, value (None: deleted), version


@dataclass
class Op:
    id: int
    proc: str
    f: str
    conv: str
    key: str
    value: str | None
    expect: int | None
    invoked_at: float
    outcome: str = "unknown"
    done_at: float = float("inf")
    revision: int = 0
    version: int = 0
    read_value: str | None = None
    current: int | None = None


@dataclass
class Sub:
    id: str
    conv: str
    start: int
    revisions: list[int] = field(default_factory=list)
    error: str | None = None  # None: never ended


@dataclass(frozen=True)
class Violation:
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.detail}"


@dataclass
class Verdict:
    violations: list[Violation]
    operations: int = 0
    deliveries: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    def rules(self) -> set[str]:
        return {v.rule for v in self.violations}

    def summary(self, limit: int = 20) -> str:
        lines = [str(v) for v in self.violations[:limit]]
        more = len(self.violations) - limit
        return "\n".join(lines + ([f"... and {more} more"] if more > 0 else []))


class _Checker:
    def __init__(self, records: Iterable[Record]) -> None:
        self.violations: list[Violation] = []
        self.ops: dict[int, Op] = {}
        self.subs: dict[str, Sub] = {}
        self.log: dict[str, dict[int, tuple[Change, ...]]] = defaultdict(dict)
        self.deliveries = 0
        for record in records:
            self._read(record)

    def flag(self, rule: str, detail: str) -> None:
        self.violations.append(Violation(rule, detail))

    def _read(self, r: Record) -> None:
        t = r["t"]
        if t == "invoke":
            self.ops[r["op"]] = Op(
                r["op"], r["proc"], r["f"], r["conv"], r["key"], r["value"], r["expect"], r["at"]
            )
        elif t in ("ok", "fail", "unknown"):
            op = self.ops[r["op"]]
            op.outcome, op.done_at = t, r["at"]
            if t == "ok":
                op.revision, op.version = r["revision"], r["version"]
                op.read_value = r.get("value")
            elif t == "fail":
                op.current = r.get("current")
        elif t == "sub":
            self.subs[r["sub"]] = Sub(r["sub"], r["conv"], r["start"])
        elif t == "deliver":
            self._deliver(r)
        elif t == "sub_end":
            self.subs[r["sub"]].error = r["error"]

    def _deliver(self, r: Record) -> None:
        self.deliveries += 1
        sub, revision = self.subs[r["sub"]], r["revision"]
        changes = tuple((c[0], c[1], c[2]) for c in r["changes"])
        known = self.log[sub.conv].setdefault(revision, changes)
        if known != changes:
            self.flag(
                "stream-disagree",
                f"{sub.conv}@{revision}: {sub.id} got {changes}, another got {known}",
            )
        expected = sub.revisions[-1] + 1 if sub.revisions else sub.start
        if revision < expected:
            rule = "duplicate-delivery" if revision in sub.revisions else "order"
            self.flag(rule, f"{sub.id}: revision {revision} after {expected - 1}")
        elif revision > expected:
            self.flag("gap", f"{sub.id}: revisions {expected}..{revision - 1} never came")
        sub.revisions.append(revision)

    # --- the rules ------------------------------------------------------------------

    def run(self) -> Verdict:
        writes = [op for op in self.ops.values() if op.f in WRITES]
        self._revisions(writes)
        self._applied(writes)
        self._versions(writes)
        self._realtime(writes)
        self._reads()
        self._subscribers(writes)
        return Verdict(self.violations, len(self.ops), self.deliveries)

    def _revisions(self, writes: list[Op]) -> None:
        seen: dict[tuple[str, int], Op] = {}
        for op in writes:
            if op.outcome != "ok":
                continue
            other = seen.setdefault((op.conv, op.revision), op)
            if other is not op:
                self.flag("revision-reused", f"ops {other.id} and {op.id}: {op.conv}@{op.revision}")

    def _applied(self, writes: list[Op]) -> None:
        where: dict[tuple[str, str, str | None], list[int]] = defaultdict(list)
        for conv, log in self.log.items():
            for revision, changes in log.items():
                for key, value, _ in changes:
                    if value is not None:
                        where[(conv, key, value)].append(revision)
        watched = {sub.conv for sub in self.subs.values()}
        for op in writes:
            if op.f == "delete":
                self._delete_applied(op, watched)
                continue
            found = where.get((op.conv, op.key, op.value), [])
            if len(found) > 1:
                self.flag("duplicated", f"op {op.id} ({op.value}) at revisions {found}")
            if op.outcome == "ok" and op.conv in watched and found != [op.revision]:
                self.flag("lost", f"op {op.id} acknowledged at {op.revision}, log has {found}")
            if op.outcome == "fail" and found:
                self.flag("failed-applied", f"op {op.id} failed but is at {found}")

    def _delete_applied(self, op: Op, watched: set[str]) -> None:
        logged = self.log[op.conv].get(op.revision, ())
        if op.outcome == "ok" and op.conv in watched and (op.key, None, 0) not in logged:
            self.flag("lost", f"delete op {op.id} acknowledged at {op.revision}, not logged")

    def _versions(self, writes: list[Op]) -> None:
        for conv, log in self.log.items():
            current: dict[str, int] = {}
            previous_revision = 0
            for revision in sorted(log):
                if previous_revision and revision != previous_revision + 1:
                    current.clear()  # a hole in what anyone saw: start over after it
                previous_revision = revision
                for key, value, version in log[revision]:
                    if value is None:
                        current[key] = 0
                        continue
                    if key in current and version != current[key] + 1:
                        self.flag(
                            "version",
                            f"{conv}/{key}@{revision}: version {version} after {current[key]}",
                        )
                    current[key] = version
        for op in writes:
            if op.outcome == "ok" and op.f != "delete":
                logged = [c for c in self.log[op.conv].get(op.revision, ()) if c[0] == op.key]
                if logged and logged[0][2] != op.version:
                    self.flag("version", f"op {op.id}: acknowledged v{op.version}, log {logged}")
            if op.f != "cas":
                continue
            if op.outcome == "ok" and op.version != (op.expect or 0) + 1:
                self.flag("cas", f"op {op.id} expected v{op.expect} and made v{op.version}")
            if op.outcome == "fail" and op.current == op.expect:
                self.flag("cas", f"op {op.id} failed though v{op.expect} was current")

    def _realtime(self, writes: list[Op]) -> None:
        """A write invoked after another was acknowledged has a higher revision."""
        by_conv: dict[str, list[Op]] = defaultdict(list)
        for op in writes:
            if op.outcome == "ok":
                by_conv[op.conv].append(op)
        for ops in by_conv.values():
            timeline: list[tuple[float, int, Op]] = []
            for op in ops:
                # At equal times the invoke sorts first: the two count as concurrent.
                timeline += [(op.invoked_at, 0, op), (op.done_at, 1, op)]
            timeline.sort(key=lambda e: (e[0], e[1]))
            done_max, done_by = 0, None
            for _, is_done, op in timeline:
                if is_done:
                    if op.revision > done_max:
                        done_max, done_by = op.revision, op
                elif op.revision <= done_max and done_by is not None:
                    self.flag(
                        "realtime",
                        f"op {op.id} got {op.revision} though op {done_by.id} was acknowledged "
                        f"at {done_max} before it began",
                    )

    def _reads(self) -> None:
        writes_of: dict[tuple[str, str], list[Op]] = defaultdict(list)
        for op in self.ops.values():
            if op.f in WRITES:
                writes_of[(op.conv, op.key)].append(op)
        for read in self.ops.values():
            if read.f != "get" or read.outcome != "ok":
                continue
            key_writes = writes_of[(read.conv, read.key)]
            before = [w for w in key_writes if w.outcome == "ok" and w.done_at < read.invoked_at]
            newest = max((w.revision for w in before), default=0)
            last = max(before, key=lambda w: w.revision, default=None)
            if read.revision == 0 and last is not None and last.f == "delete":
                continue  # absent, as the newest write before it left it
            if read.revision < newest:
                self.flag("realtime", f"read {read.id} saw {read.revision}, {newest} was acked")
            if read.revision == 0:
                continue
            source = next((w for w in key_writes if w.value == read.read_value), None)
            if source is None:
                self.flag("realtime", f"read {read.id} got {read.read_value!r}, never written")
            elif source.invoked_at > read.done_at:
                self.flag("realtime", f"read {read.id} saw op {source.id}, invoked after it")
            logged = [c for c in self.log[read.conv].get(read.revision, ()) if c[0] == read.key]
            if logged and logged[0][1] != read.read_value:
                self.flag(
                    "realtime", f"read {read.id} got {read.read_value!r}, log has {logged[0][1]!r}"
                )

    def _subscribers(self, writes: list[Op]) -> None:
        last_acked: dict[str, int] = defaultdict(int)
        for op in writes:
            if op.outcome == "ok":
                last_acked[op.conv] = max(last_acked[op.conv], op.revision)
        for sub in self.subs.values():
            reached = sub.revisions[-1] if sub.revisions else sub.start - 1
            if reached < last_acked[sub.conv]:
                self.flag(
                    "incomplete",
                    f"{sub.id} stopped at {reached}, {last_acked[sub.conv]} was acknowledged",
                )
            if sub.error:
                self.flag("incomplete", f"{sub.id} ended with {sub.error}")


def check(records: Iterable[Record]) -> Verdict:
    return _Checker(records).run()


def check_file(path: Path, timeout_s: float = 60.0) -> Verdict:
    """Checks a JSONL history; running out of time is a failed verdict."""

    def run() -> Verdict:
        with path.open() as lines:
            return check(load(lines))

    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(run).result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        return Verdict([Violation("timeout", f"the check took longer than {timeout_s}s")])
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
