"""The record of a run: one JSON object per line, appended as things happen.

Operations (one `invoke`, then at most one outcome):

    {"t": "invoke", "op": 7, "proc": "w3", "f": "put"|"cas"|"get"|"delete",
     "conv": "c", "key": "k", "value": "w3-7" | null, "expect": 4 | null, "at": 12.5}
    {"t": "ok", "op": 7, "revision": 41, "version": 5, "value": ..., "at": 12.6}
    {"t": "fail", "op": 7, "current": 6, "error": "...", "at": 12.6}      did not happen
    {"t": "unknown", "op": 7, "error": "...", "at": 12.6}              may have happened

For a write, `revision` is the revision it made and `version` the key's new
version. For a get, they are the entry's mod_revision and version (0, 0: the
key was absent) and `value` what was read. An operation with no outcome at the
end of the run is unknown. Every write's value is unique in the run, so the
checker can find it in the change stream.

Subscribers:

    {"t": "sub", "sub": "s1", "conv": "c", "start": 1, "at": ...}     first revision expected
    {"t": "deliver", "sub": "s1", "conv": "c", "revision": 41,
     "changes": [["k", "w3-7", 5], ["j", null, 0]], "at": ...}          null: deleted
    {"t": "sub_end", "sub": "s1", "error": "" | "...", "at": ...}

`at` is time.monotonic() of the recording process: real-time order between
operations is judged on it, so every client of one run records in one process.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

Record = dict[str, Any]


class History:
    """Appends records to a JSONL file and keeps them in memory."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.records: list[Record] = []
        self._file: IO[str] | None = path.open("w") if path is not None else None
        self._next_op = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def add(self, record: Record) -> None:
        record.setdefault("at", time.monotonic())
        self.records.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")

    def invoke(
        self,
        proc: str,
        f: str,
        conv: str,
        key: str,
        value: str | None = None,
        expect: int | None = None,
    ) -> int:
        self._next_op += 1
        op = self._next_op
        self.add(
            {
                "t": "invoke",
                "op": op,
                "proc": proc,
                "f": f,
                "conv": conv,
                "key": key,
                "value": value,
                "expect": expect,
            }
        )
        return op

    def ok(self, op: int, revision: int, version: int, value: str | None = None) -> None:
        self.add({"t": "ok", "op": op, "revision": revision, "version": version, "value": value})

    def fail(self, op: int, error: str, current: int | None = None) -> None:
        self.add({"t": "fail", "op": op, "error": error, "current": current})

    def unknown(self, op: int, error: str) -> None:
        self.add({"t": "unknown", "op": op, "error": error})

    def subscribed(self, sub: str, conv: str, start: int) -> None:
        self.add({"t": "sub", "sub": sub, "conv": conv, "start": start})

    def delivered(
        self, sub: str, conv: str, revision: int, changes: list[tuple[str, str | None, int]]
    ) -> None:
        self.add(
            {
                "t": "deliver",
                "sub": sub,
                "conv": conv,
                "revision": revision,
                "changes": [list(c) for c in changes],
            }
        )

    def sub_ended(self, sub: str, error: str = "") -> None:
        self.add({"t": "sub_end", "sub": sub, "error": error})


def load(lines: Iterable[str]) -> Iterator[Record]:
    for line in lines:
        if line.strip():
            yield json.loads(line)
