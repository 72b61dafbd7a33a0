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
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("merge_patch", "is not valid JSON") from None


def apply(entry: Entry | None, key: str, patch: Any) -> bytes:
    """The JSON document `patch` makes of `entry` (an absent entry starts as null)."""
    target: Any = None
    if entry is not None:
        if entry.content_type not in (JSON, ""):
            raise NotJson(key)
        try:
            target = json.loads(entry.data)
        except (ValueError, UnicodeDecodeError):
            raise NotJson(key) from None
    return json.dumps(merge(target, patch), separators=(",", ":"), ensure_ascii=False).encode()
