"""`bb range` and `bb history`: many entries, many events, every page."""

from __future__ import annotations

import argparse
from typing import Any

from blackboard_client.cli._common import Options, command
from blackboard_client.cli._output import (
    Output,
    entry_doc,
    event_doc,
    event_lines,
    table,
    value_text,
)


def register(subparsers: Any) -> None:
    range_ = command(subparsers, "range", _range, "list the entries under a prefix (all pages)")
    range_.add_argument("conv", metavar="CONV")
    range_.add_argument("prefix", nargs="?", default="", metavar="PREFIX", help="default: all")
    range_.add_argument("--revision", type=int, default=0, metavar="N", help="as of revision N")
    range_.add_argument("--keys-only", action="store_true", help="without values")

    history = command(
        subparsers, "history", _history, "list the events of a key or prefix, oldest first"
    )
    history.add_argument("conv", metavar="CONV")
    which = history.add_mutually_exclusive_group()
    which.add_argument("--key", metavar="K", help="events touching key K")
    which.add_argument("--prefix", metavar="P", help="events touching keys under P")
    history.add_argument("--from", dest="from_revision", type=int, default=0, metavar="N")
    history.add_argument("--to", dest="to_revision", type=int, default=0, metavar="N")


async def _range(args: argparse.Namespace, opts: Options) -> int:
    keys_only: bool = args.keys_only
    async with opts.client() as client:
        # Later pages are read at the first page's revision: one consistent listing.
        page = await client.range(
            args.conv, args.prefix, revision=args.revision, keys_only=keys_only
        )
        revision, entries = page.revision, list(page.entries)
        while page.next_page_token:
            page = await client.range(
                args.conv,
                args.prefix,
                revision=revision,
                page_token=page.next_page_token,
                keys_only=keys_only,
            )
            entries.extend(page.entries)
    if opts.json:
        docs = [entry_doc(e, with_value=not keys_only) for e in entries]
        Output(True).doc({"revision": revision, "entries": docs})
        return 0
    headers = ["KEY", "VERSION", "MOD_REVISION"]
    rows: list[list[object]] = [[e.key, e.version, e.mod_revision] for e in entries]
    if not keys_only:
        headers.append("VALUE")
        for row, entry in zip(rows, entries, strict=True):
            row.append(value_text(entry.value))
    Output(False).text(table(headers, rows) if rows else "")
    return 0


async def _history(args: argparse.Namespace, opts: Options) -> int:
    async with opts.client() as client:
        events = [
            e
            async for e in client.iter_history(
                args.conv,
                key=args.key,
                prefix=args.prefix,
                from_revision=args.from_revision,
                to_revision=args.to_revision,
            )
        ]
    Output(opts.json).emit(
        {"events": [event_doc(e) for e in events]},
        "\n".join(line for e in events for line in event_lines(e)),
    )
    return 0
