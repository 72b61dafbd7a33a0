"""`bb conv create|list|get|rm`: conversations."""

from __future__ import annotations

import argparse
from typing import Any

from blackboard_client.cli._common import Options, Parser, command, key_values
from blackboard_client.cli._output import Output, conversation_doc, table, when


def register(subparsers: Any) -> None:
    group: argparse.ArgumentParser = subparsers.add_parser(
        "conv", help="create, list, show and remove conversations"
    )
    commands = group.add_subparsers(
        dest="conv_command", metavar="COMMAND", required=True, parser_class=Parser
    )

    create = command(commands, "create", _create, "create a conversation; prints its id")
    create.add_argument("id", nargs="?", default="", metavar="ID", help="default: server picks")
    create.add_argument("--meta", action="append", metavar="K=V", help="metadata (repeatable)")
    create.add_argument(
        "--idle-ttl",
        type=float,
        metavar="SECONDS",
        help="recorded with the conversation (not yet enforced by the server)",
    )

    command(commands, "list", _list, "list conversations")

    get = command(commands, "get", _get, "show a conversation")
    get.add_argument("id", metavar="ID")

    rm = command(commands, "rm", _rm, "delete a conversation with its entries and log")
    rm.add_argument("id", metavar="ID")


async def _create(args: argparse.Namespace, opts: Options) -> int:
    metadata = key_values(args.meta)
    idle_ttl_ms = round(args.idle_ttl * 1000) if args.idle_ttl else 0
    async with opts.client() as client:
        created = await client.create_conversation(
            args.id, metadata=metadata, idle_ttl_ms=idle_ttl_ms
        )
    Output(opts.json).emit(conversation_doc(created), created.id)
    return 0


async def _list(args: argparse.Namespace, opts: Options) -> int:
    async with opts.client() as client:
        found = [c async for c in client.iter_conversations()]
    rows = [
        (c.id, c.revision, when(c.create_time_unix_ms), _meta(c.metadata))
        for c in sorted(found, key=lambda c: c.id)
    ]
    Output(opts.json).emit(
        {"conversations": [conversation_doc(c) for c in found]},
        table(("ID", "REVISION", "CREATED", "METADATA"), rows) if rows else "",
    )
    return 0


async def _get(args: argparse.Namespace, opts: Options) -> int:
    async with opts.client() as client:
        found = await client.get_conversation(args.id)
    doc = conversation_doc(found)
    text = table(
        ("FIELD", "VALUE"),
        [(name, _meta(value) if isinstance(value, dict) else value) for name, value in doc.items()],
    )
    Output(opts.json).emit(doc, text)
    return 0


async def _rm(args: argparse.Namespace, opts: Options) -> int:
    async with opts.client() as client:
        await client.delete_conversation(args.id)
    Output(opts.json).emit({"deleted": args.id}, f"deleted {args.id}")
    return 0


def _meta(metadata: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(dict(metadata).items()))
