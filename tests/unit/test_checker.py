"""The history checker (tests/checker) catches each broken rule and passes valid runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.checker import History, check, check_file, rules


class Run:
    """A hand-made history with a clock that moves one tick per record."""

    def __init__(self) -> None:
        self.history = History()
        self.clock = 0.0

    def _at(self) -> float:
        self.clock += 1.0
        return self.clock

    def invoke(self, f: str, key: str, value: str | None = None, expect: int | None = None) -> int:
        op = self.history.invoke("p", f, "c", key, value, expect)
        self.history.records[-1]["at"] = self._at()
        return op

    def ok(self, op: int, revision: int, version: int, value: str | None = None) -> None:
        self.history.add({"t": "ok", "op": op, "revision": revision, "version": version,
                          "value": value, "at": self._at()})  # fmt: skip

    def fail(self, op: int, current: int | None = None) -> None:
        self.history.add({"t": "fail", "op": op, "error": "x", "current": current,
                          "at": self._at()})  # fmt: skip

    def unknown(self, op: int) -> None:
        self.history.add({"t": "unknown", "op": op, "error": "UNAVAILABLE", "at": self._at()})

    def write(self, key: str, value: str, revision: int, version: int) -> int:
        op = self.invoke("put", key, value)
        self.ok(op, revision, version)
        return op

    def sub(self, name: str, start: int = 1) -> None:
        self.history.add({"t": "sub", "sub": name, "conv": "c", "start": start, "at": self._at()})

    def deliver(self, name: str, revision: int, *changes: tuple[str, str | None, int]) -> None:
        self.history.add({"t": "deliver", "sub": name, "conv": "c", "revision": revision,
                          "changes": [list(c) for c in changes], "at": self._at()})  # fmt: skip

    def end(self, name: str, error: str = "") -> None:
        self.history.add({"t": "sub_end", "sub": name, "error": error, "at": self._at()})

    def rules(self) -> set[str]:
        return check(self.history.records).rules()


def valid_run() -> Run:
    """Two writes, a CAS, a read, a failed CAS, an unknown that happened and one
    that did not; two subscribers that saw it all."""
    run = Run()
    run.sub("s1")
    run.sub("s2")
    run.write("a", "v1", 1, 1)
    run.write("b", "v2", 2, 1)
    cas = run.invoke("cas", "a", "v3", expect=1)
    run.ok(cas, 3, 2)
    read = run.invoke("get", "a")
    run.ok(read, 3, 2, "v3")
    stale = run.invoke("cas", "a", "v4", expect=1)
    run.fail(stale, current=2)
    happened = run.invoke("put", "b", "v5")
    run.unknown(happened)
    run.invoke("put", "b", "v6")  # no outcome at all: it did not happen
    log = [("a", "v1", 1), ("b", "v2", 1), ("a", "v3", 2), ("b", "v5", 2)]
    for name in ("s1", "s2"):
        for revision, change in enumerate(log, start=1):
            run.deliver(name, revision, change)
        run.end(name)
    return run


def test_a_valid_history_passes() -> None:
    verdict = check(valid_run().history.records)
    assert verdict.ok, verdict.summary()
    assert verdict.operations == 7 and verdict.deliveries == 8


def test_a_history_round_trips_through_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    run = valid_run()
    written = History(path)
    for record in run.history.records:
        written.add(dict(record))
    written.close()
    assert len(path.read_text().splitlines()) == len(run.history.records)
    assert check_file(path).ok


def test_a_lost_acknowledged_write_is_caught() -> None:
    run = Run()
    run.sub("s")
    run.write("a", "v1", 1, 1)
    run.write("a", "v2", 2, 2)
    run.deliver("s", 1, ("a", "v1", 1))
    run.end("s")
    assert run.rules() == {"lost", "incomplete"}


def test_a_write_at_another_revision_than_acknowledged_is_lost() -> None:
    run = Run()
    run.sub("s")
    run.write("a", "v1", 2, 1)
    run.deliver("s", 1, ("a", "v1", 1))
    run.deliver("s", 2, ("b", "x", 1))
    assert "lost" in run.rules()


def test_a_reused_revision_is_caught() -> None:
    run = Run()
    run.write("a", "v1", 1, 1)
    run.write("b", "v2", 1, 1)
    assert "revision-reused" in run.rules()


def test_an_unknown_write_applied_twice_is_caught() -> None:
    run = Run()
    run.sub("s")
    op = run.invoke("put", "a", "v1")
    run.unknown(op)
    run.deliver("s", 1, ("a", "v1", 1))
    run.deliver("s", 2, ("a", "v1", 2))
    assert run.rules() == {"duplicated"}


def test_a_failed_write_that_was_applied_is_caught() -> None:
    run = Run()
    run.sub("s")
    op = run.invoke("cas", "a", "v1", expect=3)
    run.fail(op, current=0)
    run.deliver("s", 1, ("a", "v1", 1))
    assert run.rules() == {"failed-applied"}


def test_versions_that_skip_are_caught() -> None:
    run = Run()
    run.sub("s")
    run.deliver("s", 1, ("a", "v1", 1))
    run.deliver("s", 2, ("a", "v2", 3))
    assert run.rules() == {"version"}


def test_versions_restart_after_a_delete() -> None:
    run = Run()
    run.sub("s")
    run.write("a", "v1", 1, 1)
    delete = run.invoke("delete", "a")
    run.ok(delete, 2, 0)
    run.write("a", "v2", 3, 1)
    run.deliver("s", 1, ("a", "v1", 1))
    run.deliver("s", 2, ("a", None, 0))
    run.deliver("s", 3, ("a", "v2", 1))
    assert run.rules() == set()


def test_an_acknowledged_version_the_log_disagrees_with_is_caught() -> None:
    run = Run()
    run.sub("s")
    run.write("a", "v1", 1, 2)
    run.deliver("s", 1, ("a", "v1", 1))
    assert run.rules() == {"version"}


def test_a_cas_that_did_not_see_the_latest_version_is_caught() -> None:
    run = Run()
    op = run.invoke("cas", "a", "v1", expect=1)
    run.ok(op, 5, 4)
    assert run.rules() == {"cas"}


def test_a_cas_refused_while_its_version_was_current_is_caught() -> None:
    run = Run()
    op = run.invoke("cas", "a", "v1", expect=2)
    run.fail(op, current=2)
    assert run.rules() == {"cas"}


def test_a_write_ordered_before_one_acknowledged_earlier_is_caught() -> None:
    run = Run()
    run.write("a", "v1", 2, 1)
    run.write("b", "v2", 1, 1)  # invoked after v1 was acknowledged, yet an older revision
    assert run.rules() == {"realtime"}


def test_concurrent_writes_may_take_either_order() -> None:
    run = Run()
    first = run.invoke("put", "a", "v1")
    second = run.invoke("put", "b", "v2")
    run.ok(first, 2, 1)
    run.ok(second, 1, 1)
    assert run.rules() == set()


def test_a_stale_read_is_caught() -> None:
    run = Run()
    run.write("a", "v1", 1, 1)
    run.write("a", "v2", 2, 2)
    read = run.invoke("get", "a")
    run.ok(read, 1, 1, "v1")
    assert run.rules() == {"realtime"}


def test_a_read_of_a_value_never_written_is_caught() -> None:
    run = Run()
    read = run.invoke("get", "a")
    run.ok(read, 1, 1, "ghost")
    assert run.rules() == {"realtime"}


def test_a_read_from_the_future_is_caught() -> None:
    run = Run()
    read = run.invoke("get", "a")
    run.ok(read, 1, 1, "v1")
    run.write("a", "v1", 1, 1)
    assert run.rules() == {"realtime"}


def test_a_read_of_a_value_other_than_the_logged_one_is_caught() -> None:
    run = Run()
    run.sub("s")
    run.write("a", "v1", 1, 1)
    run.write("a", "v2", 2, 2)
    read = run.invoke("get", "a")
    run.ok(read, 2, 2, "v1")
    run.deliver("s", 1, ("a", "v1", 1))
    run.deliver("s", 2, ("a", "v2", 2))
    assert run.rules() == {"realtime"}


@pytest.mark.parametrize(
    ("revisions", "rule"),
    [([1, 3], "gap"), ([1, 2, 2], "duplicate-delivery"), ([2, 1], "order")],
)
def test_a_subscriber_out_of_step_is_caught(revisions: list[int], rule: str) -> None:
    run = Run()
    run.sub("s")
    for revision in revisions:
        run.deliver("s", revision, ("k", f"v{revision}", revision))
    assert rule in run.rules()


def test_a_subscriber_that_did_not_finish_is_caught() -> None:
    run = Run()
    run.sub("s")
    run.write("a", "v1", 1, 1)
    run.deliver("s", 1, ("a", "v1", 1))
    run.end("s", "Unavailable: gone")
    assert run.rules() == {"incomplete"}


def test_subscribers_that_disagree_are_caught() -> None:
    run = Run()
    run.sub("s1")
    run.sub("s2")
    run.deliver("s1", 1, ("a", "v1", 1))
    run.deliver("s2", 1, ("a", "v9", 1))
    assert "stream-disagree" in run.rules()


def test_a_check_that_runs_out_of_time_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps({"t": "sub", "sub": "s", "conv": "c", "start": 1, "at": 0}) + "\n")

    def slow(records: object) -> rules.Verdict:
        time.sleep(1.0)
        raise AssertionError("should have timed out")

    monkeypatch.setattr(rules, "check", slow)
    verdict = check_file(path, timeout_s=0.1)
    assert not verdict.ok and verdict.rules() == {"timeout"}
