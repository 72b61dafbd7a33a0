"""structlog set-up: JSON lines in production, readable lines in a terminal."""

from __future__ import annotations

import logging
import sys

import orjson
import structlog


def configure(level: str, fmt: str) -> None:
    json_lines = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
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
        logger_factory=structlog.BytesLoggerFactory(sys.stderr.buffer)
        if json_lines
        else structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def _dumps(event: object, **_: object) -> bytes:
    return orjson.dumps(event, default=str)
