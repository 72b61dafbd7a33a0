"""Who a caller is and what each RPC needs of it: identities, roles, the table.

Pure: no grpc, no files. The authenticators (adapters/auth_*.py) turn
credentials into an `Identity`; `services/access.py` looks a call up in
`REQUIREMENTS` and decides with `missing_role`. docs/security.md describes the model:

- roles are ordered: reader < writer < admin; a higher role can do all a lower can;
- an identity carries role bindings: `writer` (every conversation of its tenant),
  `team-1:writer` (one conversation), `team-*:reader` (ids with that prefix);
- a conversation's admins grant roles on it to agent ids of the tenant (or `*`);
- the role a call needs is that of its RPC on the conversation the request names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

from blackboard_server.domain.errors import InvalidArgument

_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_AGENT = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
ANY_AGENT = "*"  # a grant to every identity of the tenant


class Role(IntEnum):
    READER = 1
    WRITER = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown role {text!r}: expected reader, writer or admin") from None


@dataclass(frozen=True, slots=True)
class RoleBinding:
    """A role on the conversations `pattern` names: "" all, `id`, or `prefix*`."""

    role: Role
    pattern: str = ""

    def covers(self, conversation_id: str) -> bool:
        if not self.pattern:
            return True
        if self.pattern.endswith("*"):
            return conversation_id.startswith(self.pattern[:-1])
        return conversation_id == self.pattern

    @classmethod
    def parse(cls, text: str) -> RoleBinding:
        """`writer`, `team-1:writer` or `team-*:reader` (ids may contain ':')."""
        pattern, _, role = text.strip().rpartition(":")
        if pattern == "*":
            pattern = ""
        return cls(Role.parse(role), pattern)

    def __str__(self) -> str:
        return f"{self.pattern}:{self.role.label}" if self.pattern else self.role.label


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified caller. `expires_at` (unix seconds, 0: never) bounds caching it."""

    tenant: str
    agent_id: str
    roles: tuple[RoleBinding, ...] = ()
    expires_at: float = 0.0

    def role_on(self, conversation_id: str | None) -> Role | None:
        """The highest role the identity's own bindings give; None for the whole tenant
        means: on every conversation (a binding without a pattern)."""
        best: Role | None = None
        for binding in self.roles:
            applies = (
                not binding.pattern if conversation_id is None else binding.covers(conversation_id)
            )
            if applies and (best is None or binding.role > best):
                best = binding.role
        return best


def valid_tenant(tenant: str) -> bool:
    return bool(_TENANT.fullmatch(tenant))


def identity(
    tenant: str, agent_id: str, roles: list[str] | tuple[str, ...], expires_at: float = 0.0
) -> Identity:
    """An Identity from untrusted text (a token file, JWT claims, a certificate).
    Raises ValueError saying which part is malformed."""
    if not isinstance(tenant, str) or not valid_tenant(tenant):
        raise ValueError(
            "tenant must be 1-64 characters of A-Z a-z 0-9 . _ - (letter or digit first)"
        )
    if not isinstance(agent_id, str) or not _AGENT.fullmatch(agent_id):
        raise ValueError("agent id must be 1-128 characters of A-Z a-z 0-9 . _ : @ / + = -")
    if not all(isinstance(r, str) for r in roles):
        raise ValueError("roles must be strings")
    return Identity(tenant, agent_id, tuple(RoleBinding.parse(r) for r in roles), expires_at)


def grant_subject(subject: str) -> str:
    if subject != ANY_AGENT and not _AGENT.fullmatch(subject):
        raise InvalidArgument("subject", "must be an agent id or *")
    return subject


# --- what each RPC needs ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Requirement:
    """`role` on the conversation in the request's `field`; `field` "" means on the whole
    tenant. `public`: no credentials at all (health probes); `role` None with
    `public` False: any verified identity. `per_item`: a streamed request whose
    items each name a conversation; the stream is let in for any verified
    identity and the handler authorizes each item on its own."""

    role: Role | None
    field: str = "conversation_id"
    public: bool = False
    per_item: bool = False


READ = Requirement(Role.READER)
WRITE = Requirement(Role.WRITER)
ADMIN = Requirement(Role.ADMIN)
_BB = "/blackboard.v1.Blackboard/"
_CO = "/blackboard.v1.Coordination/"
_HEALTH = "/grpc.health.v1.Health/"

# Every method the server serves. A method not here is refused (MethodNotAllowed).
REQUIREMENTS: dict[str, Requirement] = {
    _BB + "CreateConversation": Requirement(Role.ADMIN, "id"),
    _BB + "GetConversation": Requirement(Role.READER, "id"),
    _BB + "ListConversations": Requirement(Role.READER, ""),
    _BB + "DeleteConversation": Requirement(Role.ADMIN, "id"),
    _BB + "Get": READ,
    _BB + "Range": READ,
    _BB + "History": READ,
    _BB + "Subscribe": READ,
    _BB + "Put": WRITE,
    _BB + "Delete": WRITE,
    _BB + "Append": WRITE,
    _BB + "Patch": WRITE,
    _BB + "Txn": WRITE,
    _BB + "Write": Requirement(Role.WRITER, per_item=True),
    _BB + "GrantRole": ADMIN,
    _BB + "RevokeRole": ADMIN,
    _BB + "ListGrants": ADMIN,
    _CO + "OpenSession": WRITE,
    _CO + "KeepAlive": WRITE,
    _CO + "CloseSession": WRITE,
    _CO + "ListSessions": READ,
    _CO + "AcquireLock": WRITE,
    _CO + "ReleaseLock": WRITE,
    _CO + "GetLock": READ,
    _CO + "Campaign": WRITE,
    _CO + "Proclaim": WRITE,
    _CO + "Resign": WRITE,
    _CO + "GetLeader": READ,
    _CO + "Observe": READ,
    _HEALTH + "Check": Requirement(None, "", public=True),
    _HEALTH + "Watch": Requirement(None, "", public=True),
    # The schema is public (it is in the repository), but not to anonymous callers.
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Requirement(None, ""),
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": Requirement(None, ""),
}


def sufficient(have: Role | None, need: Role) -> bool:
    return have is not None and have >= need
