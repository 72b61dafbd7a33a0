"""Where the etcd coordinator keeps its state, and how values are encoded. Pure.

    {root}/t/{tenant}/c/{conversation}/sessions/{session}        a session, on its lease
    {root}/t/{tenant}/c/{conversation}/locks/{name}/{session}    a claim on a lock
    {root}/t/{tenant}/c/{conversation}/elections/{role}/{session}
    {root}/t/{tenant}/s/{session}                                the tenant's sessions (quota)
    {root}/replicas/{replica}                                    a live replica, on its lease
    {root}/shards/{k}/{lease}                                    a replica's claim on shard k
    {root}/progress/{k}                                          shard k recorded up to here

A session id is its etcd lease id as 16 hex digits, so a claim (whose key ends
in it) is put on the same lease and goes when the session goes.

Tenant, conversation, name and role are percent-escaped ("/" is "%2F", "%" is
"%25"), so a segment always ends at the next "/": the claims of lock "a"
(`locks/a/`) are not a prefix of those of lock "a/b" (`locks/a%2Fb/`).
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from urllib.parse import quote, unquote

from blackboard_server.adapters.etcd import KeyValue
from blackboard_server.domain.coordination import Holder, SessionInfo
from blackboard_server.domain.model import ConversationRef, FenceKind

_FOLDER = {FenceKind.LOCK: "locks", FenceKind.ELECTION: "elections"}
_KIND = {folder: kind for kind, folder in _FOLDER.items()}
_SESSION_ID = re.compile(r"[0-9a-f]{16}")


def _esc(segment: str) -> str:
    return quote(segment, safe="")


def session_id_of(lease_id: int) -> str:
    return f"{lease_id:016x}"


def lease_of(session_id: str) -> int | None:
    """The lease behind a session id, or None if it cannot be one of ours."""
    if not _SESSION_ID.fullmatch(session_id):
        return None
    return int(session_id, 16)


def shard_of(ref: ConversationRef, shards: int) -> int:
    """Stable across processes and versions (unlike hash()): every replica agrees."""
    return zlib.crc32(f"{ref.tenant}/{ref.id}".encode()) % shards


@dataclass(frozen=True, slots=True)
class SessionKey:
    ref: ConversationRef
    session_id: str


@dataclass(frozen=True, slots=True)
class ClaimKey:
    ref: ConversationRef
    kind: FenceKind
    name: str
    session_id: str


class Layout:
    def __init__(self, prefix: str) -> None:
        self.root = prefix.rstrip("/")
        self.conversations = f"{self.root}/t/".encode()

    def conversation(self, ref: ConversationRef) -> str:
        return f"{self.root}/t/{_esc(ref.tenant)}/c/{_esc(ref.id)}/"

    def sessions(self, ref: ConversationRef) -> bytes:
        return f"{self.conversation(ref)}sessions/".encode()

    def tenant_sessions(self, tenant: str) -> bytes:
        return f"{self.root}/t/{_esc(tenant)}/s/".encode()

    def session(self, ref: ConversationRef, session_id: str) -> bytes:
        return self.sessions(ref) + session_id.encode()

    def claims(self, ref: ConversationRef, kind: FenceKind) -> bytes:
        """Every claim of one kind in the conversation."""
        return f"{self.conversation(ref)}{_FOLDER[kind]}/".encode()

    def queue(self, ref: ConversationRef, kind: FenceKind, name: str) -> bytes:
        """The claims on one lock or role."""
        return self.claims(ref, kind) + f"{_esc(name)}/".encode()

    def claim(self, ref: ConversationRef, kind: FenceKind, name: str, session_id: str) -> bytes:
        return self.queue(ref, kind, name) + session_id.encode()

    def replica(self, replica_id: str) -> bytes:
        return f"{self.root}/replicas/{_esc(replica_id)}".encode()

    def shard_queue(self, shard: int) -> bytes:
        return f"{self.root}/shards/{shard}/".encode()

    def progress(self, shard: int) -> bytes:
        return f"{self.root}/progress/{shard}".encode()

    def parse(self, key: bytes) -> SessionKey | ClaimKey | None:
        """What a key under `conversations` is; None for anything else."""
        if not key.startswith(self.conversations):
            return None
        try:
            parts = key[len(self.conversations) :].decode().split("/")
        except UnicodeDecodeError:
            return None  # not one of ours
        if len(parts) < 5 or parts[1] != "c":
            return None
        ref = ConversationRef(unquote(parts[0]), unquote(parts[2]))
        if len(parts) == 5 and parts[3] == "sessions":
            return SessionKey(ref, parts[4])
        kind = _KIND.get(parts[3])
        if len(parts) == 6 and kind is not None:
            return ClaimKey(ref, kind, unquote(parts[4]), parts[5])
        return None


# ---- values ---------------------------------------------------------------------


def encode_session(agent_id: str, ttl_ms: int, *, closing: bool = False) -> bytes:
    record: dict[str, object] = {"agent_id": agent_id, "ttl_ms": ttl_ms}
    if closing:
        # Put just before the lease is revoked, so that whoever sees the key
        # deleted can tell a close from an expiry.
        record["closing"] = True
    return json.dumps(record, separators=(",", ":")).encode()


def decode_session(ref: ConversationRef, session_id: str, value: bytes) -> tuple[SessionInfo, bool]:
    """The session, and whether it was being closed."""
    record = json.loads(value)
    info = SessionInfo(ref, session_id, str(record["agent_id"]), int(record["ttl_ms"]))
    return info, bool(record.get("closing", False))


def encode_claim(agent_id: str, value: bytes) -> bytes:
    """The agent id as a JSON string on the first line, then the value's bytes."""
    return json.dumps(agent_id).encode() + b"\n" + value


def decode_claim(value: bytes) -> tuple[str, bytes]:
    agent, _, rest = value.partition(b"\n")
    return str(json.loads(agent)), rest


def holder_of(ref: ConversationRef, kind: FenceKind, name: str, kv: KeyValue) -> Holder:
    """The claim `kv` as a Holder: its token is the claim's create revision."""
    agent_id, value = decode_claim(kv.value)
    session_id = kv.key.rsplit(b"/", 1)[-1].decode()
    return Holder(ref, kind, name, session_id, agent_id, kv.create_revision, value)
