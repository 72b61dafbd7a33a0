"""`bb get|put|del|append|patch`: one key at a time."""

from __future__ import annotations

import argparse
from typing import Any

from blackboard_client import Expect, WriteResult
from blackboard_client.cli._common import (
    Options,
    add_fence_argument,
    add_value_arguments,
    command,
    parse_fence,
    parse_json,
    ttl_ms,
    value_from_args,
)
from blackboard_client.cli._output import Output, entry_doc, value_fields, value_text, write_doc


def register(subparsers: Any) -> None:
    get = command(subparsers, "get", _get, "print the value of a key (-o json: the whole entry)")
    get.add_argument("conv", metavar="CONV")
    get.add_argument("key", metavar="KEY")
    get.add_argument("--revision", type=int, default=0, metavar="N", help="as of revision N")

    put = command(subparsers, "put", _put, "create or replace a key")
    put.add_argument("conv", metavar="CONV")
    put.add_argument("key", metavar="KEY")
    add_value_arguments(put)
    _add_expect(put, absent=True)
    put.add_argument("--ttl", type=float, metavar="SECONDS", help="delete the key after this")
    add_fence_argument(put)

    delete = command(subparsers, "del", _delete, "delete a key")
    delete.add_argument("conv", metavar="CONV")
    delete.add_argument("key", metavar="KEY")
    _add_expect(delete, absent=False)
    add_fence_argument(delete)

    append = command(
        subparsers, "append", _append, "add a child KEY/<revision> (a message log); prints its key"
    )
    append.add_argument("conv", metavar="CONV")
    append.add_argument("key", metavar="KEY")
    add_value_arguments(append)
    append.add_argument("--ttl", type=float, metavar="SECONDS", help="delete the child after this")
    add_fence_argument(append)

    patch = command(
        subparsers, "patch", _patch, "apply a JSON merge patch (RFC 7386); prints the result"
    )
    patch.add_argument("conv", metavar="CONV")
    patch.add_argument("key", metavar="KEY")
    patch.add_argument("patch", metavar="JSON", help="the merge patch, a JSON object")
    _add_expect(patch, absent=True)
    add_fence_argument(patch)


def _add_expect(parser: argparse.ArgumentParser, *, absent: bool) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--expect-version", type=int, metavar="N", help="only if the key is at version N"
    )
    group.add_argument(
        "--expect-mod-revision", type=int, metavar="N", help="only if the key was last written at N"
    )
    if absent:
        group.add_argument(
            "--expect-absent", action="store_true", help="only if the key does not exist"
        )


def _expect(args: argparse.Namespace) -> Expect | None:
    if getattr(args, "expect_absent", False):
        return Expect.absent()
    if args.expect_version is not None:
        return Expect.version(args.expect_version)
    if args.expect_mod_revision is not None:
        return Expect.mod_revision(args.expect_mod_revision)
    return None


def _written(result: WriteResult) -> str:
    replayed = " (replayed)" if result.replayed else ""
    return f"{result.key} version {result.version} at revision {result.revision}{replayed}"


async def _get(args: argparse.Namespace, opts: Options) -> int:
    async with opts.client() as client:
        entry = await client.get(args.conv, args.key, revision=args.revision)
    Output(opts.json).emit(entry_doc(entry), value_text(entry.value))
    return 0


async def _put(args: argparse.Namespace, opts: Options) -> int:
    value = value_from_args(args)
    fence = parse_fence(args.fence)
    async with opts.client() as client:
        result = await client.put(
            args.conv,
            args.key,
            value,
            expect=_expect(args),
            ttl_ms=ttl_ms(args.ttl),
            fence=fence,
        )
    Output(opts.json).emit(write_doc(result), _written(result))
    return 0


async def _delete(args: argparse.Namespace, opts: Options) -> int:
    fence = parse_fence(args.fence)
    async with opts.client() as client:
        result = await client.delete(args.conv, args.key, expect=_expect(args), fence=fence)
    Output(opts.json).emit(write_doc(result), f"deleted {args.key} at revision {result.revision}")
    return 0


async def _append(args: argparse.Namespace, opts: Options) -> int:
    value = value_from_args(args)
    fence = parse_fence(args.fence)
    async with opts.client() as client:
        result = await client.append(
            args.conv, args.key, value, ttl_ms=ttl_ms(args.ttl), fence=fence
        )
    Output(opts.json).emit(write_doc(result), result.key)
    return 0


async def _patch(args: argparse.Namespace, opts: Options) -> int:
    parse_json(args.patch, "JSON")
    fence = parse_fence(args.fence)
    async with opts.client() as client:
        patched = await client.patch(
            args.conv, args.key, args.patch.encode(), expect=_expect(args), fence=fence
        )
    doc = {**write_doc(patched.result), **value_fields(patched.value)}
    Output(opts.json).emit(doc, value_text(patched.value))
    return 0
