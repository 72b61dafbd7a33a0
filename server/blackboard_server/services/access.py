"""Who may do what: authentication by the configured methods, authorization by
role, and the grants that a conversation's admins manage.

The auth gate (api/auth.py) calls `authenticate` and `authorize` once per call,
before the handler; nothing else decides access. An identity's own role
bindings are checked first, with no I/O; the conversation's grants are read
only when those do not suffice, and cached for `GRANTS_CACHE_S` (a revoke
takes effect at once on the replica that served it, and within that time on
the others).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from blackboard_server.domain import limits
from blackboard_server.domain.auth import (
    ANY_AGENT,
    Identity,
    Requirement,
    Role,
    grant_subject,
    sufficient,
)
from blackboard_server.domain.errors import (
    ConversationNotFound,
    CredentialsInvalid,
    CredentialsMissing,
    InvalidArgument,
    RoleRequired,
    Unauthenticated,
)
from blackboard_server.domain.model import ConversationRef
from blackboard_server.ports import StateStore
from blackboard_server.services.blackboard import Caller

GRANTS_CACHE_S = 1.0
GRANTS_CACHED = 10_000


class Authenticator(Protocol):
    name: str

    def authenticate(self, token: str, certificate: bytes) -> Identity | None:
        """The identity, or None when the credentials are not of this method's kind
        (the next method is tried); raises Unauthenticated when they are, but fail."""
        ...


class Access:
    def __init__(self, methods: Sequence[Authenticator], store: StateStore) -> None:
        self._methods = tuple(methods)
        self._store = store
        #: Whether a method looks at client certificates (reading one costs a little).
        self.certificates = any(m.name == "mtls" for m in self._methods)
        self._grants: dict[ConversationRef, tuple[float, Mapping[str, int]]] = {}

    # --- authentication ------------------------------------------------------------

    def authenticate(self, token: str, certificate: bytes) -> Identity:
        failure: Unauthenticated | None = None
        for method in self._methods:
            try:
                found = method.authenticate(token, certificate)
            except Unauthenticated as error:
                failure = failure or error
                continue
            if found is not None:
                return found
        if failure is not None:
            raise failure
        if not token and not certificate:
            raise CredentialsMissing()
        raise CredentialsInvalid()

    # --- authorization -------------------------------------------------------------

    async def authorize(self, who: Identity, need: Requirement, conversation_id: str) -> None:
        if need.role is None:
            return
        if not need.field:
            if not sufficient(who.role_on(None), need.role):
                raise RoleRequired(need.role.label, "")
            return
        if sufficient(who.role_on(conversation_id), need.role):
            return
        granted = await self._granted(who, conversation_id)
        if not sufficient(granted, need.role):
            raise RoleRequired(need.role.label, conversation_id)

    async def _granted(self, who: Identity, conversation_id: str) -> Role | None:
        try:
            ref = ConversationRef(who.tenant, limits.conversation_id(conversation_id))
        except InvalidArgument:
            return None  # no such conversation can hold grants
        grants = await self._cached_grants(ref)
        best = max(grants.get(who.agent_id, 0), grants.get(ANY_AGENT, 0))
        return Role(best) if best else None

    async def _cached_grants(self, ref: ConversationRef) -> Mapping[str, int]:
        now = time.monotonic()
        cached = self._grants.get(ref)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            grants: Mapping[str, int] = await self._store.grants(ref)
        except ConversationNotFound:
            grants = {}
        if len(self._grants) >= GRANTS_CACHED:
            self._grants.clear()
        self._grants[ref] = (now + GRANTS_CACHE_S, grants)
        return grants

    def forget(self, ref: ConversationRef) -> None:
        self._grants.pop(ref, None)

    # --- grants ----------------------------------------------------------------------

    async def grant(self, caller: Caller, conversation_id: str, subject: str, role: int) -> None:
        ref = caller.conversation(conversation_id)
        grant_subject(subject)
        if role not in (Role.READER, Role.WRITER, Role.ADMIN):
            raise InvalidArgument("role", "must be reader, writer or admin")
        await self._store.set_grant(ref, subject, role)
        self.forget(ref)

    async def revoke(self, caller: Caller, conversation_id: str, subject: str) -> bool:
        ref = caller.conversation(conversation_id)
        grant_subject(subject)
        revoked = await self._store.set_grant(ref, subject, 0)
        self.forget(ref)
        return revoked

    async def list_grants(self, caller: Caller, conversation_id: str) -> list[tuple[str, Role]]:
        grants = await self._store.grants(caller.conversation(conversation_id))
        return [(subject, Role(role)) for subject, role in sorted(grants.items())]
