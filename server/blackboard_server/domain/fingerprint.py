"""A stable digest of a write, so a request id reused for a different call is caught."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from blackboard_server.domain.model import AppendChild, Delete, Put, WriteBatch


def fingerprint(batch: WriteBatch) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in _parts(batch):
        raw = part if isinstance(part, bytes) else str(part).encode()
        h.update(len(raw).to_bytes(8, "little"))
        h.update(raw)
    return h.hexdigest()


def _parts(batch: WriteBatch) -> Iterator[bytes | str | int]:
    for c in batch.compares:
        yield from (c.key, c.target, c.operator, c.number, c.value)
    for branch in (batch.success, batch.failure):
        yield len(branch)
        for op in branch:
            if isinstance(op, Put):
                yield from ("put", op.key, op.data, op.content_type, op.ttl_ms, op.session_id)
            elif isinstance(op, AppendChild):
                yield from ("append", op.parent, op.data, op.content_type, op.ttl_ms)
            elif isinstance(op, Delete):
                yield from ("delete", op.key)
            else:
                yield from ("end-session", op.session_id)
    if batch.fence is not None:
        yield from (batch.fence.mark, batch.fence.token)
    if (record := batch.coordination) is not None:
        yield from (
            "coordination",
            record.kind,
            record.agent_id,
            record.session_id,
            record.name,
            record.token,
            record.value,
        )
    for mark, token in batch.marks:
        yield from ("mark", mark, token)
