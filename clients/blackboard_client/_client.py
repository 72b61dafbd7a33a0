"""The async client: one method per RPC of blackboard.v1.Blackboard, plus pagers;
the coordination methods come from `CoordinationClient` (`_coordination.py`).

Every call gets the client's deadline and retry policy; every write gets a
request id (a uuid4 unless the caller gave one), made once per call and sent
on every attempt, so a retried write is applied once.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Mapping
from typing import Any

import orjson

from blackboard.v1 import blackboard_pb2 as pb
from blackboard_client import _convert, _requests
from blackboard_client._base import AGENT_ID_HEADER, AUTHORIZATION_HEADER
from blackboard_client._coordination import CoordinationClient
from blackboard_client._model import (
    UNSET,
    Compare,
    Conversation,
    ConversationPage,
    Entry,
    Event,
    Expect,
    Fence,
    Grant,
    HistoryPage,
    PatchResult,
    RangePage,
    SupportsFence,
    TxnOp,
    TxnResult,
    Value,
    WriteResult,
)
from blackboard_client._retry import RetryPolicy
from blackboard_client._session import Session
from blackboard_client._subscribe import Subscription, grpc_opener
from blackboard_client._targets import CHANNEL_OPTIONS, Target, channel_target
from blackboard_client._tls import Tls, open_channel
from blackboard_client._view import Mirror
from blackboard_client._writer import Writer


def connect(
    target: Target,
    *,
    agent_id: str | None = None,
    timeout: float | None = 10.0,
    retry: RetryPolicy | None = None,
    metadata: Mapping[str, str] | None = None,
    token: str | None = None,
    tls: Tls | bool | None = None,
) -> Client:
    """A client for the server at `target`, used as `async with`.

    `target` is "host:port", several of them (a list, or one string with
    commas), or "dns:///name:port": the client spreads calls over the replicas
    and moves off one that fails (see `_targets.py`).

    `timeout` is the deadline of each attempt of each unary call, in seconds
    (None: no deadline). `metadata` is sent with every call. `token` is sent as
    `authorization: Bearer TOKEN`. `tls`: a `Tls` (CA file, client certificate,
    server name), True for TLS trusting the system's CAs, None/False for
    plaintext. With authentication on, the server takes the agent id from the
    verified identity and ignores `agent_id`.
    """
    headers = dict(metadata or {})
    if agent_id:
        headers[AGENT_ID_HEADER] = agent_id
    if token:
        headers[AUTHORIZATION_HEADER] = f"Bearer {token}"
    channel = open_channel(channel_target(target), tls, CHANNEL_OPTIONS)
    return Client(channel, timeout=timeout, retry=retry or RetryPolicy(), metadata=headers)


class Client(CoordinationClient):
    """Made by `connect()`. Safe to share between tasks of one event loop."""

    # --- conversations ------------------------------------------------------------

    async def create_conversation(
        self, id: str = "", *, metadata: Mapping[str, str] | None = None, idle_ttl_ms: int = 0
    ) -> Conversation:
        """Creates a conversation; an empty id lets the server pick one. With
        `idle_ttl_ms`, the server deletes it once that long passes with no write
        (docs/api.md)."""
        request = pb.CreateConversationRequest(
            id=id, metadata=dict(metadata or {}), idle_ttl_ms=idle_ttl_ms
        )
        return _convert.conversation(await self._call(self._stub.CreateConversation, request))

    async def get_conversation(self, id: str) -> Conversation:
        request = pb.GetConversationRequest(id=id)
        return _convert.conversation(await self._call(self._stub.GetConversation, request))

    async def list_conversations(
        self, *, page_size: int = 0, page_token: str = ""
    ) -> ConversationPage:
        request = pb.ListConversationsRequest(page_size=page_size, page_token=page_token)
        return _convert.conversation_page(await self._call(self._stub.ListConversations, request))

    async def iter_conversations(self, *, page_size: int = 0) -> AsyncGenerator[Conversation, None]:
        token = ""
        while True:
            page = await self.list_conversations(page_size=page_size, page_token=token)
            for conversation in page.conversations:
                yield conversation
            token = page.next_page_token
            if not token:
                return

    async def delete_conversation(self, id: str) -> None:
        await self._call(self._stub.DeleteConversation, pb.DeleteConversationRequest(id=id))

    # --- access ---------------------------------------------------------------------

    async def grant_role(self, conversation_id: str, subject: str, role: str) -> None:
        """Gives `subject` (an agent id of this tenant, or "*") `role` ("reader",
        "writer" or "admin") on the conversation, replacing its earlier grant. Admins only."""
        request = pb.GrantRoleRequest(
            conversation_id=conversation_id, subject=subject, role=_convert.role_number(role)
        )
        await self._call(self._stub.GrantRole, request)

    async def revoke_role(self, conversation_id: str, subject: str) -> bool:
        """Takes back the subject's grant; False if it had none. Admins only."""
        request = pb.RevokeRoleRequest(conversation_id=conversation_id, subject=subject)
        return (await self._call(self._stub.RevokeRole, request)).revoked

    async def list_grants(self, conversation_id: str) -> list[Grant]:
        """The roles granted on the conversation (not those in identities). Admins only."""
        request = pb.ListGrantsRequest(conversation_id=conversation_id)
        response = await self._call(self._stub.ListGrants, request)
        return [_convert.grant(g) for g in response.grants]

    # --- reads --------------------------------------------------------------------

    async def get(self, conversation_id: str, key: str, *, revision: int = 0) -> Entry:
        """The entry at `key` (latest, or as of `revision`); KeyNotFound if absent."""
        request = pb.GetRequest(conversation_id=conversation_id, key=key, revision=revision)
        response = await self._call(self._stub.Get, request)
        return _convert.entry(response.entry)

    async def range(
        self,
        conversation_id: str,
        prefix: str = "",
        *,
        revision: int = 0,
        page_size: int = 0,
        page_token: str = "",
        keys_only: bool = False,
    ) -> RangePage:
        """One page of the entries under `prefix`, in key order."""
        request = pb.RangeRequest(
            conversation_id=conversation_id,
            prefix=prefix,
            revision=revision,
            page_size=page_size,
            page_token=page_token,
            keys_only=keys_only,
        )
        return _convert.range_page(await self._call(self._stub.Range, request))

    async def iter_range(
        self,
        conversation_id: str,
        prefix: str = "",
        *,
        revision: int = 0,
        page_size: int = 0,
        keys_only: bool = False,
    ) -> AsyncGenerator[Entry, None]:
        """Every entry under `prefix`, page after page, all read at one revision."""
        token = ""
        while True:
            page = await self.range(
                conversation_id,
                prefix,
                revision=revision,
                page_size=page_size,
                page_token=token,
                keys_only=keys_only,
            )
            revision = page.revision
            for entry in page.entries:
                yield entry
            token = page.next_page_token
            if not token:
                return

    async def history(
        self,
        conversation_id: str,
        *,
        key: str | None = None,
        prefix: str | None = None,
        from_revision: int = 0,
        to_revision: int = 0,
        page_size: int = 0,
        with_previous: bool = False,
    ) -> HistoryPage:
        """One page of the events touching `key` (or `prefix`), oldest first."""
        if key is not None and prefix is not None:
            raise TypeError("pass key= or prefix=, not both")
        request = pb.HistoryRequest(
            conversation_id=conversation_id,
            from_revision=from_revision,
            to_revision=to_revision,
            page_size=page_size,
            with_previous=with_previous,
        )
        if key is not None:
            request.key = key
        elif prefix is not None:
            request.prefix = prefix
        return _convert.history_page(await self._call(self._stub.History, request))

    async def iter_history(
        self,
        conversation_id: str,
        *,
        key: str | None = None,
        prefix: str | None = None,
        from_revision: int = 0,
        to_revision: int = 0,
        page_size: int = 0,
        with_previous: bool = False,
    ) -> AsyncGenerator[Event, None]:
        while True:
            page = await self.history(
                conversation_id,
                key=key,
                prefix=prefix,
                from_revision=from_revision,
                to_revision=to_revision,
                page_size=page_size,
                with_previous=with_previous,
            )
            for event in page.events:
                yield event
            if not page.next_revision:
                return
            from_revision = page.next_revision

    # --- writes -------------------------------------------------------------------

    async def put(
        self,
        conversation_id: str,
        key: str,
        value: bytes | str | Value | None = None,
        *,
        json: Any = UNSET,
        content_type: str | None = None,
        expect: Expect | None = None,
        ttl_ms: int = 0,
        session: Session | str | None = None,
        request_id: str | None = None,
        fence: Fence | SupportsFence | None = None,
    ) -> WriteResult:
        """Sets `key` to bytes, text (`str`), a `Value`, or `json=` any JSON value.

        `session=` (a `Session` or its id) binds the entry to that session: it
        is deleted when the session ends. `fence=` takes a `Fence`, or a held
        `Lock` or `Leadership`.
        """
        request = _requests.put(
            conversation_id,
            key,
            value,
            json,
            content_type,
            expect,
            ttl_ms,
            session,
            request_id,
            fence,
        )
        return _convert.write_result(await self._call(self._stub.Put, request))

    async def delete(
        self,
        conversation_id: str,
        key: str,
        *,
        expect: Expect | None = None,
        request_id: str | None = None,
        fence: Fence | SupportsFence | None = None,
    ) -> WriteResult:
        request = _requests.delete(conversation_id, key, expect, request_id, fence)
        return _convert.write_result(await self._call(self._stub.Delete, request))

    async def append(
        self,
        conversation_id: str,
        key: str,
        value: bytes | str | Value | None = None,
        *,
        json: Any = UNSET,
        content_type: str | None = None,
        ttl_ms: int = 0,
        request_id: str | None = None,
        fence: Fence | SupportsFence | None = None,
    ) -> WriteResult:
        """Adds a child `key/<revision>`; the result's `key` names it."""
        request = _requests.append(
            conversation_id, key, value, json, content_type, ttl_ms, request_id, fence
        )
        return _convert.write_result(await self._call(self._stub.Append, request))

    async def patch(
        self,
        conversation_id: str,
        key: str,
        merge_patch: Mapping[str, Any] | bytes,
        *,
        expect: Expect | None = None,
        request_id: str | None = None,
        fence: Fence | SupportsFence | None = None,
    ) -> PatchResult:
        """Applies an RFC 7386 JSON merge patch (a dict, or JSON bytes) to `key`."""
        if not isinstance(merge_patch, bytes):
            merge_patch = orjson.dumps(merge_patch)
        request = pb.PatchRequest(
            conversation_id=conversation_id,
            key=key,
            merge_patch=merge_patch,
            expect=_convert.expect_pb(expect),
            request_id=_requests.request_id(request_id),
            fence=_convert.fence_pb(fence),
        )
        response = await self._call(self._stub.Patch, request)
        return PatchResult(_convert.write_result(response.result), _convert.value(response.value))

    async def txn(
        self,
        conversation_id: str,
        compares: Iterable[Compare] = (),
        success: Iterable[TxnOp] = (),
        failure: Iterable[TxnOp] = (),
        *,
        request_id: str | None = None,
        fence: Fence | SupportsFence | None = None,
    ) -> TxnResult:
        """If every compare holds apply `success`, else `failure`: one revision."""
        request = pb.TxnRequest(
            conversation_id=conversation_id,
            compares=[_convert.compare_pb(c) for c in compares],
            success=[_convert.txn_op_pb(op) for op in success],
            failure=[_convert.txn_op_pb(op) for op in failure],
            request_id=_requests.request_id(request_id),
            fence=_convert.fence_pb(fence),
        )
        return _convert.txn_result(await self._call(self._stub.Txn, request))

    # --- the change stream ----------------------------------------------------------

    def subscribe(
        self,
        conversation_id: str,
        prefix: str = "",
        *,
        start_revision: int = 0,
        no_reset: bool = False,
        with_previous: bool = False,
    ) -> Subscription:
        """The changes under `prefix`: a snapshot first, or every event from `start_revision`.

        Reconnects by itself and never delivers an event twice; see `Subscription`.
        """

        request = pb.SubscribeRequest(
            conversation_id=conversation_id,
            prefix=prefix,
            no_reset=no_reset,
            with_previous=with_previous,
        )
        opener = grpc_opener(self._stub.Subscribe, request, self._metadata)
        return Subscription(opener, start_revision=start_revision, retry=self.retry)

    def mirror(self, conversation_id: str, prefix: str = "") -> Mirror:
        """A live local copy of the entries under `prefix`, for an `async with` block."""
        return Mirror(self.subscribe(conversation_id, prefix))

    def writer(self, *, max_batch: int = 256) -> Writer:
        """A write stream for many writes at once, used as `async with`.

        `await w.put(...)` (and `delete`, `append`) returns what `Client.put`
        would; the writes in flight at a time share stream messages (up to
        `max_batch` each), so one call's overhead is shared by many writes.
        See `Writer`.
        """
        return Writer(self._stub.Write, self._metadata, self.retry, self._timeout, max_batch)
