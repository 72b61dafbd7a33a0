"""`bb`: the Blackboard command line, built on the async SDK.

Each command group is a module with a `register(subparsers)`; a command is an
async handler `(args, options) -> exit code`, run with `asyncio.run`. Errors
become one line on stderr and an exit code (`_common.EXIT_CODES_HELP`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from blackboard_client import BlackboardError
from blackboard_client.cli import conv, coord, health, kv, reads, txn, watch
from blackboard_client.cli._child import CannotRun
from blackboard_client.cli._common import (
    CANNOT_RUN,
    ERROR,
    EXIT_CODES_HELP,
    INTERRUPTED,
    USAGE,
    Handler,
    Options,
    Parser,
    UsageError,
    add_global_options,
    describe,
    exit_code,
)

__all__ = ["build_parser", "main"]

_EPILOG = f"""\
environment: BB_TARGET, BB_AGENT_ID, BB_TOKEN, BB_TLS, BB_TLS_CA, BB_TLS_CERT, BB_TLS_KEY,
BB_TLS_SERVER_NAME (flags win over variables).

{EXIT_CODES_HELP}"""


def build_parser() -> Parser:
    parser = Parser(
        prog="bb",
        description="The Blackboard command line: entries, the change stream, locks, elections.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_global_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in (conv, kv, txn, reads, watch, coord, health):
        group.register(commands)
    return parser


def parse(parser: Parser, argv: Sequence[str]) -> argparse.Namespace:
    """The parsed arguments, with `cmd`: what follows `--` for bb lock / bb elect.

    Other commands keep argparse's own meaning of `--` (the rest are
    positional, e.g. `bb put CONV KEY -- -5`).
    """
    if "--" in argv:
        split = list(argv).index("--")
        try:
            head = parser.parse_args(argv[:split])
        except UsageError:
            head = None
        if head is not None and head.command in ("lock", "elect"):
            head.cmd = list(argv[split + 1 :])
            return head
    args = parser.parse_args(argv)
    args.cmd = []
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns its exit code."""
    parser = build_parser()
    try:
        args = parse(parser, sys.argv[1:] if argv is None else argv)
        options = Options.from_args(args, os.environ)
        handler: Handler = args.handler
        return asyncio.run(_terminable(handler(args, options)))
    except UsageError as error:
        return _fail(str(error), USAGE)
    except BlackboardError as error:
        return _fail(describe(error), exit_code(error))
    except CannotRun as error:
        return _fail(str(error), CANNOT_RUN)
    except (KeyboardInterrupt, asyncio.CancelledError):
        return INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`bb range ... | head`): say nothing more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ERROR


async def _terminable(command: Coroutine[Any, Any, int]) -> int:
    """SIGTERM (`kill`, a supervisor stopping bb) ends bb as SIGINT does: the command
    is cancelled, so a held lock or leadership is given back and a CMD run under
    it is stopped first."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await command


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"bb: {message}\n")
    return code
