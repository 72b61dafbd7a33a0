"""RFC 7386 JSON merge patch. Pure."""

from __future__ import annotations

import json
from typing import Any

from blackboard_server.domain.errors import InvalidArgument, NotJson
from blackboard_server.domain.model import JSON, Entry


def merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = merge(result.get(name), value)
    return result


def parse_patch(raw: bytes) -> Any:
    try:
        return json.loads(raw, parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("merge_patch", "is not valid JSON") from None
    except RecursionError:
        raise InvalidArgument("merge_patch", "is nested too deeply") from None


def _not_json(constant: str) -> Any:
    # json.loads takes NaN and Infinity, which JSON (RFC 8259) does not have.
    raise ValueError(constant)


def apply(entry: Entry | None, key: str, patch: Any) -> bytes:
    """The JSON document `patch` makes of `entry` (an absent entry starts as null)."""
    target: Any = None
    if entry is not None:
        if entry.content_type not in (JSON, ""):
            raise NotJson(key)
        try:
            target = json.loads(entry.data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise NotJson(key) from None
    try:
        merged = merge(target, patch)
        text = json.dumps(merged, separators=(",", ":"), ensure_ascii=False)
    except RecursionError:
        raise InvalidArgument("merge_patch", "is nested too deeply") from None
    try:
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate (from a "\ud800" escape) has no UTF-8 form; escape it instead.
        return json.dumps(merged, separators=(",", ":")).encode()
