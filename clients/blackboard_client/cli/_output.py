"""How values, entries and events look: as readable text, and as JSON documents.

A value is shown by its content type: JSON as JSON, text as text, anything
else as base64 behind a marker (`base64:` in text). In JSON output a value is
two fields: `encoding` ("json", "text" or "base64") and `value` (the JSON
value, the string, or the base64 string), so a script never has to guess.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from blackboard_client import (
    Change,
    ChangeType,
    Conversation,
    CoordinationEvent,
    Entry,
    Event,
    Leader,
    LockHolder,
    SessionInfo,
    Value,
    WriteResult,
)

BASE64_MARKER = "base64:"


def _is_json(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


def decode(value: Value) -> tuple[str, Any]:
    """(encoding, value) of a stored value: ("json", obj), ("text", str) or ("base64", str)."""
    if _is_json(value.content_type):
        try:
            return "json", orjson.loads(value.data)
        except orjson.JSONDecodeError:
            pass
    if value.content_type.lower().startswith("text/"):
        try:
            return "text", value.data.decode()
        except UnicodeDecodeError:
            pass
    return "base64", base64.b64encode(value.data).decode()


def value_text(value: Value) -> str:
    encoding, decoded = decode(value)
    if encoding == "json":
        return orjson.dumps(decoded).decode()
    if encoding == "text":
        return str(decoded)
    return BASE64_MARKER + str(decoded)


def value_fields(value: Value) -> dict[str, Any]:
    encoding, decoded = decode(value)
    return {"content_type": value.content_type, "encoding": encoding, "value": decoded}


def when(unix_ms: int) -> str:
    if not unix_ms:
        return "-"
    stamp = datetime.fromtimestamp(unix_ms / 1000, tz=UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- documents ---------------------------------------------------------------------


def conversation_doc(c: Conversation) -> dict[str, Any]:
    return {
        "id": c.id,
        "tenant": c.tenant,
        "metadata": dict(c.metadata),
        "revision": c.revision,
        "create_time": when(c.create_time_unix_ms),
        "update_time": when(c.update_time_unix_ms),
        "idle_ttl_ms": c.idle_ttl_ms,
    }


def entry_doc(e: Entry, *, with_value: bool = True) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "key": e.key,
        "version": e.version,
        "create_revision": e.create_revision,
        "mod_revision": e.mod_revision,
    }
    if with_value:
        doc.update(value_fields(e.value))
    if e.expires_unix_ms:
        doc["expires"] = when(e.expires_unix_ms)
    if e.session_id:
        doc["session_id"] = e.session_id
    doc["agent_id"] = e.provenance.agent_id
    return doc


def write_doc(r: WriteResult) -> dict[str, Any]:
    return {
        "revision": r.revision,
        "key": r.key,
        "version": r.version,
        "create_revision": r.create_revision,
        "replayed": r.replayed,
    }


def change_doc(c: Change) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": str(c.type), "key": c.key}
    if c.type is ChangeType.PUT:
        doc["version"] = c.entry.version
        doc.update(value_fields(c.entry.value))
    return doc


def coordination_doc(c: CoordinationEvent) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "kind": str(c.kind),
        "agent_id": c.agent_id,
        "session_id": c.session_id,
    }
    if c.name:
        doc["name"] = c.name
    if c.token:
        doc["token"] = c.token
    if c.value:
        doc.update(value_fields(Value(c.value, "")))
    return doc


def event_doc(e: Event) -> dict[str, Any]:
    return {
        "revision": e.revision,
        "time": when(e.time_unix_ms),
        "agent_id": e.provenance.agent_id,
        "changes": [change_doc(c) for c in e.changes],
        "coordination": coordination_doc(e.coordination) if e.coordination else None,
    }


def session_doc(s: SessionInfo) -> dict[str, Any]:
    return {"session_id": s.session_id, "agent_id": s.agent_id, "ttl_ms": s.ttl_ms}


def holder_doc(h: LockHolder) -> dict[str, Any]:
    return {"name": h.name, "agent_id": h.agent_id, "session_id": h.session_id, "token": h.token}


def leader_doc(leader: Leader) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "role": leader.role,
        "agent_id": leader.agent_id,
        "session_id": leader.session_id,
        "token": leader.token,
    }
    doc.update(value_fields(leader_value(leader)))
    return doc


def leader_value(leader: Leader) -> Value:
    """A leader's value has no content type: JSON if it parses, text if UTF-8, else bytes."""
    try:
        orjson.loads(leader.value)
        return Value(leader.value, "application/json")
    except orjson.JSONDecodeError:
        pass
    try:
        leader.value.decode()
        return Value(leader.value, "text/plain")
    except UnicodeDecodeError:
        return Value(leader.value, "")


# --- text ----------------------------------------------------------------------------


def event_lines(e: Event) -> list[str]:
    """One line per change of the event, and one for a coordination event."""
    lines: list[str] = []
    agent = e.provenance.agent_id or "-"
    if e.coordination is not None:
        c = e.coordination
        parts = [str(e.revision), str(c.kind), c.name or "-", f"agent={c.agent_id or '-'}"]
        if c.token:
            parts.append(f"token={c.token}")
        parts.append(f"session={c.session_id}")
        lines.append(" ".join(parts))
    for change in e.changes:
        if change.type is ChangeType.PUT:
            text = f"v{change.entry.version} {value_text(change.entry.value)}"
            lines.append(f"{e.revision} put {change.key} {text} agent={agent}")
        else:
            lines.append(f"{e.revision} delete {change.key} agent={agent}")
    return lines


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    cells = [[str(h) for h in headers], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


def _cell(value: object) -> str:
    text = str(value)
    return text.replace("\n", "\\n") if text else "-"


class Output:
    """Where results go: stdout, as text or as JSON."""

    def __init__(self, json: bool) -> None:
        self.json = json

    def doc(self, document: object) -> None:
        """One JSON document (one line: JSON lines when called repeatedly)."""
        sys.stdout.write(orjson.dumps(document).decode() + "\n")
        sys.stdout.flush()

    def text(self, text: str) -> None:
        sys.stdout.write(text + "\n" if text else "")
        sys.stdout.flush()

    def emit(self, document: object, text: str) -> None:
        if self.json:
            self.doc(document)
        else:
            self.text(text)
