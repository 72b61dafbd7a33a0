"""Coordination records: what goes into the conversation's log when an agent
joins or leaves, or a lock or leadership changes hands. Pure.

Each record is a commit with a request id derived from what it records (the
session, or the lock and token), so the replica that served the call and the
replica that observed an expiry in etcd can both try to record it and the log
still holds it once. The two may disagree on the kind (released by the holder,
or expired under it): whichever commits first stands, the other is answered
RequestIdReused and dropped.

Fence marks move with the records: acquiring raises the mark to the new token,
and ending raises it past the old one, so a holder that lost its lock cannot
write with it even before anyone else takes the lock.
"""

from __future__ import annotations

from dataclasses import dataclass

from blackboard_server.domain.model import (
    ConversationRef,
    Coordination,
    CoordinationKind,
    DeleteSessionEntries,
    Fence,
    FenceKind,
    WriteBatch,
)


@dataclass(frozen=True, slots=True)
class SessionInfo:
    ref: ConversationRef
    session_id: str
    agent_id: str
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a lock or leads a role. The token is an etcd revision."""

    ref: ConversationRef
    kind: FenceKind
    name: str
    session_id: str
    agent_id: str
    token: int
    value: bytes = b""

    @property
    def mark(self) -> str:
        return Fence(self.kind, self.name, self.token).mark


@dataclass(frozen=True, slots=True)
class Census:
    """How much coordination state exists across the deployment at one moment."""

    sessions: int = 0
    locks_held: int = 0  # locks with a holder
    leaders: int = 0  # election roles with a leader


_ACQUIRED = {
    FenceKind.LOCK: CoordinationKind.LOCK_ACQUIRED,
    FenceKind.ELECTION: CoordinationKind.LEADER_ELECTED,
}
_RELEASED = {
    FenceKind.LOCK: CoordinationKind.LOCK_RELEASED,
    FenceKind.ELECTION: CoordinationKind.LEADER_RESIGNED,
}
_EXPIRED = {
    FenceKind.LOCK: CoordinationKind.LOCK_EXPIRED,
    FenceKind.ELECTION: CoordinationKind.LEADER_LOST,
}


def joined(session: SessionInfo) -> WriteBatch:
    record = Coordination(CoordinationKind.AGENT_JOINED, session.agent_id, session.session_id)
    return _batch(record, f"coord:session:{session.session_id}:joined")


def session_ended(session: SessionInfo, *, expired: bool) -> WriteBatch:
    """The agent left: its session-bound entries go in the same revision."""
    kind = CoordinationKind.AGENT_EXPIRED if expired else CoordinationKind.AGENT_LEFT
    record = Coordination(kind, session.agent_id, session.session_id)
    return _batch(
        record,
        f"coord:session:{session.session_id}:ended",
        ops=(DeleteSessionEntries(session.session_id),),
    )


def acquired(holder: Holder) -> WriteBatch:
    record = Coordination(
        _ACQUIRED[holder.kind],
        holder.agent_id,
        holder.session_id,
        holder.name,
        holder.token,
        holder.value,
    )
    return _batch(record, _holder_id(holder, "acquired"), marks=((holder.mark, holder.token),))


def ended(holder: Holder, *, expired: bool) -> WriteBatch:
    kind = (_EXPIRED if expired else _RELEASED)[holder.kind]
    record = Coordination(kind, holder.agent_id, holder.session_id, holder.name, holder.token)
    return _batch(record, _holder_id(holder, "ended"), marks=((holder.mark, holder.token + 1),))


def _holder_id(holder: Holder, what: str) -> str:
    return f"coord:{holder.kind}:{holder.name}:{holder.token}:{what}"


def _batch(
    record: Coordination,
    request_id: str,
    *,
    ops: tuple[DeleteSessionEntries, ...] = (),
    marks: tuple[tuple[str, int], ...] = (),
) -> WriteBatch:
    return WriteBatch(
        compares=(),
        success=ops,
        request_id=request_id,
        agent_id=record.agent_id,
        session_id=record.session_id,
        coordination=record,
        marks=marks,
    )
