"""`bb txn CONV --file SPEC.json`: compares, then the success or the failure ops.

The spec (docs/cli.md has an example):

    {
      "compare": [{"key": "claims/1", "target": "version", "op": "==", "value": 0}],
      "success": [{"put": "claims/1", "json": "worker-1"}, {"delete": "queue/1"}],
      "failure": []
    }

A compare's `target` is version (the default), create_revision, mod_revision
or value; `op` one of == != > <; for the value target give `value` (text) or
`json`. A put takes `value` (text), `json`, or `base64`, and optionally
`ttl` in seconds.
"""

from __future__ import annotations

import argparse
import base64
import binascii
from collections.abc import Mapping
from typing import Any, get_args

import orjson

from blackboard_client import Compare, TxnOp, TxnResult, Value
from blackboard_client._model import JSON_CONTENT_TYPE, TEXT_CONTENT_TYPE, Operator, Target
from blackboard_client.cli._common import (
    Options,
    UsageError,
    add_fence_argument,
    command,
    parse_fence,
    parse_json,
    read_input,
)
from blackboard_client.cli._output import Output, table, write_doc

_TARGETS: tuple[str, ...] = get_args(Target)
_OPERATORS: tuple[str, ...] = get_args(Operator)


def register(subparsers: Any) -> None:
    txn = command(
        subparsers,
        "txn",
        _txn,
        "if every compare holds apply the success ops, else the failure ops (one revision)",
    )
    txn.add_argument("conv", metavar="CONV")
    txn.add_argument(
        "--file", required=True, metavar="SPEC", help="the JSON spec (- for stdin; see docs)"
    )
    add_fence_argument(txn)


Spec = tuple[tuple[Compare, ...], tuple[TxnOp, ...], tuple[TxnOp, ...]]


def parse_spec(spec: Any) -> Spec:
    """The compares and both branches of a spec; UsageError saying what is wrong."""
    if not isinstance(spec, dict):
        raise UsageError("a txn spec is a JSON object with compare, success and failure")
    unknown = set(spec) - {"compare", "success", "failure"}
    if unknown:
        raise UsageError(f"unknown txn spec fields: {', '.join(sorted(unknown))}")
    compares = tuple(_compare(c, f"compare[{i}]") for i, c in enumerate(_list(spec, "compare")))
    success = tuple(_op(o, f"success[{i}]") for i, o in enumerate(_list(spec, "success")))
    failure = tuple(_op(o, f"failure[{i}]") for i, o in enumerate(_list(spec, "failure")))
    return compares, success, failure


def _list(spec: Mapping[str, Any], name: str) -> list[Any]:
    found = spec.get(name, [])
    if not isinstance(found, list):
        raise UsageError(f"txn spec: {name} must be a list")
    return found


def _compare(item: Any, where: str) -> Compare:
    if not isinstance(item, dict) or not isinstance(item.get("key"), str):
        raise UsageError(f"txn spec {where}: needs a key")
    target = item.get("target", "version")
    op = item.get("op", "==")
    if target not in _TARGETS:
        raise UsageError(f"txn spec {where}: target is one of {', '.join(_TARGETS)}")
    if op not in _OPERATORS:
        raise UsageError(f"txn spec {where}: op is one of {' '.join(_OPERATORS)}")
    if target == "value":
        if "json" in item:
            return Compare.value(item["key"], op, orjson.dumps(item["json"]))
        if isinstance(item.get("value"), str):
            return Compare.value(item["key"], op, item["value"])
        raise UsageError(f"txn spec {where}: a value compare needs value (text) or json")
    number = item.get("value")
    if not isinstance(number, int) or isinstance(number, bool):
        raise UsageError(f"txn spec {where}: {target} compares with an integer value")
    return Compare(item["key"], target, op, number)


def _op(item: Any, where: str) -> TxnOp:
    if isinstance(item, dict) and isinstance(item.get("delete"), str) and len(item) == 1:
        return TxnOp.delete(item["delete"])
    if not isinstance(item, dict) or not isinstance(item.get("put"), str):
        raise UsageError(f'txn spec {where}: an op is {{"put": KEY, ...}} or {{"delete": KEY}}')
    ttl = item.get("ttl", 0)
    if not isinstance(ttl, int | float) or ttl < 0:
        raise UsageError(f"txn spec {where}: ttl is a number of seconds")
    return TxnOp("put", item["put"], _put_value(item, where), round(ttl * 1000))


def _put_value(item: Mapping[str, Any], where: str) -> Value:
    given = [name for name in ("value", "json", "base64") if name in item]
    if len(given) != 1:
        raise UsageError(f"txn spec {where}: a put takes one of value, json, base64")
    if "json" in item:
        return Value(orjson.dumps(item["json"]), JSON_CONTENT_TYPE)
    if "base64" in item:
        try:
            return Value(base64.b64decode(item["base64"], validate=True), "")
        except (binascii.Error, TypeError):
            raise UsageError(f"txn spec {where}: base64 is not valid") from None
    if not isinstance(item["value"], str):
        raise UsageError(f"txn spec {where}: value is text (use json for other values)")
    return Value(item["value"].encode(), TEXT_CONTENT_TYPE)


def _result_doc(result: TxnResult) -> dict[str, Any]:
    return {
        "succeeded": result.succeeded,
        "revision": result.revision,
        "replayed": result.replayed,
        "results": [write_doc(r) for r in result.results],
    }


async def _txn(args: argparse.Namespace, opts: Options) -> int:
    spec = read_input(args.file)
    try:
        text = spec.decode()
    except UnicodeDecodeError:
        raise UsageError(f"{args.file} is not UTF-8") from None
    compares, success, failure = parse_spec(parse_json(text, "the txn spec"))
    fence = parse_fence(args.fence)
    async with opts.client() as client:
        result = await client.txn(args.conv, compares, success, failure, fence=fence)
    branch = "success" if result.succeeded else "failure"
    lines = [f"{branch}: revision {result.revision}"]
    if result.results:
        rows = [(r.key, r.version, r.revision) for r in result.results]
        lines.append(table(("KEY", "VERSION", "REVISION"), rows))
    Output(opts.json).emit(_result_doc(result), "\n".join(lines))
    return 0
