"""What every command shares: global options, the client, exit codes, argument parsing.

Nothing here prints; `_output.py` does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import orjson

from blackboard_client import (
    AlreadyExists,
    BlackboardError,
    Client,
    ConditionFailed,
    DeadlineExceeded,
    Fence,
    Fenced,
    InvalidArgument,
    LeadershipLost,
    LockHeld,
    LockLost,
    NotFound,
    NotHolder,
    PermissionDenied,
    Tls,
    Unauthenticated,
    Unavailable,
    Value,
    WaitExpired,
    connect,
)
from blackboard_client._model import JSON_CONTENT_TYPE, TEXT_CONTENT_TYPE

DEFAULT_TARGET = "127.0.0.1:50051"

# Exit codes: documented in `bb --help` (EXIT_CODES_HELP) and docs/cli.md.
OK = 0
ERROR = 1
USAGE = 2
NOT_FOUND = 3
CONFLICT = 4
AUTH = 5
UNAVAILABLE = 6
LOCK_LOST = 7
CANNOT_RUN = 127  # CMD could not be started, as a shell says
INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0    ok
  1    any other error
  2    usage: bad arguments (also INVALID_ARGUMENT from the server)
  3    not found: conversation, key, session, or nobody holds the lock / leads the role
  4    conflict: CONDITION_FAILED, FENCED, LOCK_HELD, NOT_HOLDER, ALREADY_EXISTS,
       or a --wait for a lock or role ran out (WAIT_EXPIRED)
  5    auth: UNAUTHENTICATED, PERMISSION_DENIED
  6    unavailable: UNAVAILABLE or DEADLINE_EXCEEDED after retries; health not SERVING
  7    bb lock / bb elect: the lock or leadership was lost while CMD ran (CMD was stopped)
  127  bb lock / bb elect: CMD could not be started
  130  interrupted (SIGINT or SIGTERM)
  with a CMD, bb lock and bb elect exit with CMD's exit code (128+N if killed by signal N)
"""

# Order matters: the first class an error is an instance of decides.
_EXIT_BY_ERROR: tuple[tuple[type[BlackboardError], int], ...] = (
    (LockLost, LOCK_LOST),
    (WaitExpired, CONFLICT),
    (InvalidArgument, USAGE),
    (NotFound, NOT_FOUND),
    (ConditionFailed, CONFLICT),
    (Fenced, CONFLICT),
    (LockHeld, CONFLICT),
    (NotHolder, CONFLICT),
    (AlreadyExists, CONFLICT),
    (Unauthenticated, AUTH),
    (PermissionDenied, AUTH),
    (Unavailable, UNAVAILABLE),
    (DeadlineExceeded, UNAVAILABLE),
)


def exit_code(error: BlackboardError) -> int:
    for cls, code in _EXIT_BY_ERROR:
        if isinstance(error, cls):
            return code
    return ERROR


def describe(error: BlackboardError) -> str:
    """One line for stderr: the server's message and what kind of error it was."""
    if isinstance(error, LockLost):
        kind = "LEADERSHIP_LOST" if isinstance(error, LeadershipLost) else "LOCK_LOST"
    elif error.reason != "ERROR_REASON_UNSPECIFIED":
        kind = error.reason
    else:
        kind = error.status
    message = error.message.splitlines()[0] if error.message else kind
    return f"{message} ({kind})"


class UsageError(Exception):
    """Bad arguments: exit code 2."""


class Parser(argparse.ArgumentParser):
    """Raises UsageError instead of exiting, so `main` decides what happens."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see: {self.prog} --help)")


@dataclass(frozen=True, slots=True)
class Options:
    """The global options, after flags and BB_* variables were resolved."""

    target: str
    agent_id: str
    timeout: float | None
    token: str = field(repr=False)  # never printed
    output: str = "text"  # "text" or "json"
    tls: Tls | None = None
    #: The process environment, handed on to a CMD that bb runs.
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> Options:
        timeout: float | None = args.timeout
        if timeout is not None and timeout <= 0:
            timeout = None
        return cls(
            target=args.target or environ.get("BB_TARGET") or DEFAULT_TARGET,
            agent_id=args.agent_id or environ.get("BB_AGENT_ID") or "",
            timeout=timeout,
            token=args.token or environ.get("BB_TOKEN") or "",
            output=args.output,
            tls=tls_from_args(args, environ),
            environ=dict(environ),
        )

    @property
    def json(self) -> bool:
        return self.output == "json"

    def client(self) -> Client:
        """A client for `async with`; the token goes as a bearer authorization header."""
        return connect(
            self.target,
            agent_id=self.agent_id or None,
            timeout=self.timeout,
            token=self.token or None,
            tls=self.tls,
        )


def tls_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> Tls | None:
    """TLS when --tls or any --tls-* option (or BB_TLS* variable) is given; else plaintext."""
    given = {
        name: getattr(args, name, None) or environ.get("BB_" + name.upper()) or ""
        for name in ("tls_ca", "tls_cert", "tls_key", "tls_server_name")
    }
    enabled = getattr(args, "tls", False) or environ.get("BB_TLS", "") in ("1", "true", "yes")
    if not enabled and not any(given.values()):
        return None
    try:
        return Tls(
            ca_file=given["tls_ca"],
            cert_file=given["tls_cert"],
            key_file=given["tls_key"],
            server_name=given["tls_server_name"],
        )
    except ValueError:
        raise UsageError("--tls-cert and --tls-key go together") from None


def add_global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The options every command takes, before or after the command's name.

    On the subcommands the defaults are suppressed so that a value given before
    the command is not overwritten by the default of the subcommand's copy.
    """

    def default(value: object) -> Any:
        return value if defaults else argparse.SUPPRESS

    group = parser.add_argument_group("global options")
    group.add_argument(
        "--target",
        default=default(None),
        help=f"server host:port (env BB_TARGET; default {DEFAULT_TARGET})",
    )
    group.add_argument(
        "--agent-id", default=default(None), help="agent id sent with every call (env BB_AGENT_ID)"
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=default(10.0),
        help="deadline of each call attempt, seconds (0: none; default 10)",
    )
    group.add_argument(
        "--token",
        default=default(None),
        help="bearer token, sent as the authorization header (env BB_TOKEN; "
        "prefer the variable: flags show in process lists)",
    )
    group.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help="use TLS, trusting the system's CAs (env BB_TLS=1; implied by any --tls-*)",
    )
    group.add_argument(
        "--tls-ca", default=default(None), metavar="FILE", help="CA bundle (PEM) (env BB_TLS_CA)"
    )
    group.add_argument(
        "--tls-cert",
        default=default(None),
        metavar="FILE",
        help="client certificate (PEM), for mTLS (env BB_TLS_CERT)",
    )
    group.add_argument(
        "--tls-key",
        default=default(None),
        metavar="FILE",
        help="client certificate's key (PEM) (env BB_TLS_KEY)",
    )
    group.add_argument(
        "--tls-server-name",
        default=default(None),
        metavar="NAME",
        help="name the server's certificate must carry (env BB_TLS_SERVER_NAME)",
    )
    group.add_argument(
        "-o",
        "--output",
        choices=("text", "json"),
        default=default("text"),
        help="text (readable, the default) or json (for scripts)",
    )


Handler = Callable[[argparse.Namespace, Options], Coroutine[Any, Any, int]]


def command(
    subparsers: Any, name: str, handler: Handler, help: str, **kwargs: Any
) -> argparse.ArgumentParser:
    """Adds one command whose `handler` runs with the parsed arguments."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help, description=help, **kwargs
    )
    add_global_options(parser, defaults=False)
    parser.set_defaults(handler=handler)
    return parser


# --- argument values -------------------------------------------------------------------


def key_values(pairs: Sequence[str] | None, what: str = "--meta") -> dict[str, str]:
    """`k=v` strings as a dict."""
    found: dict[str, str] = {}
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"{what} takes key=value, not {pair!r}")
        found[name] = value
    return found


def parse_json(text: str, what: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise UsageError(f"{what} is not valid JSON: {error}") from None


def parse_fence(text: str | None) -> Fence | None:
    """`lock:NAME:TOKEN` or `election:ROLE:TOKEN` (NAME may contain ':')."""
    if text is None:
        return None
    kind, _, rest = text.partition(":")
    name, _, token = rest.rpartition(":")
    if kind not in ("lock", "election") or not name or not token.isdigit():
        raise UsageError(f"--fence takes lock:NAME:TOKEN or election:ROLE:TOKEN, not {text!r}")
    if kind == "lock":
        return Fence.lock(name, int(token))
    return Fence.election(name, int(token))


def read_input(source: str) -> bytes:
    """The bytes of a file, or of stdin for `-`."""
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(source).read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read {source}: {error.strerror}") from None


def bytes_value(data: bytes, content_type: str | None) -> Value:
    """Raw input as a value: text when it is UTF-8, else bytes, unless a type was given."""
    if content_type is not None:
        return Value(data, content_type)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return Value(data, "")
    if any(ch < " " and ch not in "\t\n\r" for ch in text):
        return Value(data, "")  # control characters: not something to print as text
    return Value(data, TEXT_CONTENT_TYPE)


def value_from_args(args: argparse.Namespace) -> Value:
    """The value of put/append: VALUE (text), --json, --file F, or `-` (stdin)."""
    given = [
        name
        for name, present in (
            ("VALUE", args.value is not None),
            ("--json", args.json is not None),
            ("--file", args.file is not None),
        )
        if present
    ]
    if len(given) > 1:
        raise UsageError(f"give one of VALUE, --json, --file; got {' and '.join(given)}")
    content_type: str | None = args.content_type
    if args.json is not None:
        parse_json(args.json, "--json")
        return Value(args.json.encode(), content_type or JSON_CONTENT_TYPE)
    if args.file is not None:
        return bytes_value(read_input(args.file), content_type)
    if args.value == "-":
        return bytes_value(read_input("-"), content_type)
    if args.value is None:
        raise UsageError("give the value: VALUE, --json JSON, --file F, or - for stdin")
    return Value(args.value.encode(), content_type or TEXT_CONTENT_TYPE)


def add_value_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("value", nargs="?", metavar="VALUE", help="text, or - to read stdin")
    parser.add_argument("--json", metavar="JSON", help="a JSON value (stored as JSON)")
    parser.add_argument("--file", metavar="F", help="read the value from F (- for stdin)")
    parser.add_argument(
        "--content-type",
        help="content type to store (default: JSON for --json, else text if UTF-8, else bytes)",
    )


def add_fence_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fence",
        metavar="KIND:NAME:TOKEN",
        help="fence the write: lock:NAME:TOKEN or election:ROLE:TOKEN "
        "(e.g. lock:$BB_LOCK_NAME:$BB_LOCK_TOKEN inside bb lock)",
    )


def ttl_ms(seconds: float | None) -> int:
    if seconds is None:
        return 0
    if seconds <= 0:
        raise UsageError("--ttl must be positive")
    return max(1, round(seconds * 1000))
