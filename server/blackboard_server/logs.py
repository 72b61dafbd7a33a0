"""structlog set-up: JSON lines in production, readable lines in a terminal.

JSON lines are written in batches: a line waits at most FLUSH_DELAY_S (or
until 64 KiB are pending) and is written together with the lines that came
meanwhile, so a busy server makes one write per batch rather than one per call
(measured: the per-call access line was the largest cost on the put path). At
exit the batch is flushed; a process killed with SIGKILL loses at most the
last FLUSH_DELAY_S of lines.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime
import logging
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

import orjson
import structlog

FLUSH_DELAY_S = 0.05
FLUSH_BYTES = 64 << 10


class BatchedLines:
    """Lines for one stream, written in batches."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lines: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        atexit.register(self.flush)

    def write(self, line: bytes) -> None:
        self._lines.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop here: nothing would flush later
                self.flush()
                return
            self._timer = loop.call_later(FLUSH_DELAY_S, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            lines, self._lines, self._size = self._lines, [], 0
            self._stream.write(b"".join(lines))
            self._stream.flush()


class BatchedLogger:
    """A structlog logger that hands rendered JSON lines to a BatchedLines."""

    def __init__(self, lines: BatchedLines) -> None:
        self._lines = lines

    def msg(self, message: bytes) -> None:
        self._lines.write(message + b"\n")

    log = debug = info = warn = warning = error = err = critical = exception = fatal = msg


# One batch per process for stderr, which is itself one per process.
_stderr_lines: BatchedLines | None = None
_json_lines = False  # what configure() chose


def _batched_factory(*_: Any) -> BatchedLogger:
    global _stderr_lines
    if _stderr_lines is None:
        _stderr_lines = BatchedLines(sys.stderr.buffer)
    return BatchedLogger(_stderr_lines)


def flush() -> None:
    """Writes out pending lines now (at shutdown)."""
    if _stderr_lines is not None:
        _stderr_lines.flush()


def configure(level: str, fmt: str) -> None:
    global _json_lines
    json_lines = _json_lines = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    # orjson renders bytes: a line per call must cost little (docs/operations.md).
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=_batched_factory if json_lines else structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def _dumps(event: object, **_: object) -> bytes:
    return orjson.dumps(event, default=str)


def json_line_writer() -> Callable[[str, str, dict[str, Any]], None] | None:
    """With JSON lines: a writer of one line from a level, an event and its fields,
    rendered as the processor chain above renders it (event, level, an ISO UTC
    timestamp) but with one orjson call and no chain: the per-call access line
    takes this path (tests/bench_observe.py: the end of a call 18 -> 8.5 us). None
    with readable lines."""
    if not _json_lines:
        return None
    lines = _batched_factory()._lines
    now = datetime.datetime.now
    utc = datetime.UTC
    dumps = orjson.dumps

    def write(level: str, event: str, fields: dict[str, Any]) -> None:
        fields["event"] = event
        fields["level"] = level
        fields["timestamp"] = now(utc).isoformat().replace("+00:00", "Z")
        lines.write(dumps(fields, default=str) + b"\n")

    return write
