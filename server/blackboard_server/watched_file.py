"""A file whose parsed content is reloaded when the file changes, without a restart.

`current()` looks at the file at most once per `interval_s` (a stat), parses it
again only when its size, mtime or inode moved, and keeps the last good content
when the new one does not parse (logged, without the content: these files hold
keys and token hashes).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import structlog

T = TypeVar("T")
log = structlog.get_logger("blackboard.files")


class WatchedFile(Generic[T]):
    def __init__(
        self,
        path: str,
        parse: Callable[[bytes], T],
        *,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._parse = parse
        self._interval = interval_s
        self._clock = clock
        self._stamp = self._stat()
        # At start a bad file is fatal: the server must not come up without its keys.
        try:
            self._value = parse(self._read())
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        self._checked = clock()
        #: How many times the content was replaced since start.
        self.reloads = 0

    def current(self) -> T:
        now = self._clock()
        if now - self._checked >= self._interval:
            self._checked = now
            self._refresh()
        return self._value

    def _refresh(self) -> None:
        try:
            stamp = self._stat()
        except OSError as error:
            log.error(
                "cannot stat; keeping the loaded content", path=self.path, error=error.strerror
            )
            return
        if stamp == self._stamp:
            return
        try:
            value = self._parse(self._read())
        except (OSError, ValueError) as error:
            # Not saved as the stamp: the next check tries again (a writer may be mid-way).
            log.error("cannot reload; keeping the loaded content", path=self.path, error=str(error))
            return
        self._stamp, self._value = stamp, value
        self.reloads += 1
        log.info("reloaded", path=self.path)

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return st.st_size, st.st_mtime_ns, st.st_ino

    def _read(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()
