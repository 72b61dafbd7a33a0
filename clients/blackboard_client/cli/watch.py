"""`bb watch CONV [PREFIX]`: follow the change stream until interrupted or --count events.

The SDK's subscription reconnects and resumes by itself, so a server restart
or a replica failing over shows up here as nothing at all: no gap, no repeat.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from blackboard_client import Events, Reset, Snapshot, Synced
from blackboard_client.cli._common import Options, UsageError, command
from blackboard_client.cli._output import Output, entry_doc, event_doc, event_lines, value_text


def register(subparsers: Any) -> None:
    watch = command(
        subparsers,
        "watch",
        _watch,
        "print data and coordination events as they happen (JSON lines with -o json)",
    )
    watch.add_argument("conv", metavar="CONV")
    watch.add_argument("prefix", nargs="?", default="", metavar="PREFIX", help="default: all")
    start = watch.add_mutually_exclusive_group()
    start.add_argument(
        "--from",
        dest="from_revision",
        type=int,
        default=0,
        metavar="N",
        help="every event from revision N on (default: from now)",
    )
    start.add_argument(
        "--snapshot", action="store_true", help="print the current entries first, then events"
    )
    watch.add_argument("--count", type=int, default=0, metavar="N", help="stop after N events")


async def _watch(args: argparse.Namespace, opts: Options) -> int:
    if args.count < 0 or args.from_revision < 0:
        raise UsageError("--count and --from take numbers >= 0")
    out = Output(opts.json)
    snapshot: bool = args.snapshot
    wanted: int = args.count
    seen = 0
    async with opts.client() as client:
        stream = client.subscribe(args.conv, args.prefix, start_revision=args.from_revision)
        async with stream:
            async for item in stream:
                if isinstance(item, Events):
                    for event in item.events:
                        _print_event(out, event_doc(event), event_lines(event))
                        seen += 1
                        if seen == wanted:
                            return 0
                elif isinstance(item, Snapshot) and snapshot:
                    for entry in item.entries:
                        doc = {"type": "entry", **entry_doc(entry)}
                        out.emit(doc, f"{entry.key} v{entry.version} {value_text(entry.value)}")
                elif isinstance(item, Synced) and out.json:
                    # Tells a script the watch is live: what is written from now on is seen.
                    out.doc({"type": "synced", "revision": item.revision})
                elif isinstance(item, Reset):
                    _reset(out, item)
    return 0


def _print_event(out: Output, doc: dict[str, Any], lines: list[str]) -> None:
    out.emit({"type": "event", **doc}, "\n".join(lines))


def _reset(out: Output, reset: Reset) -> None:
    if out.json:
        out.doc(
            {
                "type": "reset",
                "requested_revision": reset.requested_revision,
                "compact_revision": reset.compact_revision,
            }
        )
    else:
        sys.stderr.write(
            f"bb: revision {reset.requested_revision} is no longer retained "
            f"(compacted up to {reset.compact_revision}); continuing from a fresh snapshot\n"
        )
