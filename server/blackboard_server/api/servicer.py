"""The blackboard.v1.Blackboard servicer: unpack, call a service, pack."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc

from blackboard.v1 import blackboard_pb2 as pb
from blackboard_server.api import convert, writes
from blackboard_server.api.auth import IDENTITY
from blackboard_server.api.errors import unary
from blackboard_server.api.outcomes import streamed_write_outcomes
from blackboard_server.api.stalls import StallWatch
from blackboard_server.api.write_stream import WriteStream
from blackboard_server.domain.auth import Role
from blackboard_server.domain.errors import CredentialsMissing, SlowSubscriber
from blackboard_server.domain.limits import Limits
from blackboard_server.domain.quota import Quota
from blackboard_server.metrics import Metrics
from blackboard_server.services.access import Access
from blackboard_server.services.blackboard import BlackboardService, Caller
from blackboard_server.services.quotas import Admission, QuotaBook
from blackboard_server.services.subscription import SubscribeOptions, Subscriptions, resume_point

Context = grpc.aio.ServicerContext[Any, Any]
AGENT_HEADER = "x-agent-id"


def caller(context: Context, tenant: str, verified: bool) -> Caller:
    """Who the call acts for. With authentication on, the verified identity (never a
    header); with auth none, the configured tenant and the agent the client names."""
    if verified:
        who = IDENTITY.get()
        if who is None:
            # Unreachable: the auth gate admits no call without an identity.
            raise CredentialsMissing()
        return Caller(tenant=who.tenant, agent_id=who.agent_id)
    agent = ""
    for key, value in context.invocation_metadata() or ():
        if key == AGENT_HEADER:
            agent = value if isinstance(value, str) else value.decode()
    return Caller(tenant=tenant, agent_id=agent[:128])


class BlackboardServicer:
    def __init__(
        self,
        blackboard: BlackboardService,
        subscriptions: Subscriptions,
        access: Access,
        *,
        tenant: str,
        write_timeout_s: float,
        admission: Admission | None = None,
        verified: bool = False,
        limits: Limits | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._limits = limits or Limits()
        self._closing = asyncio.Event()
        self._outcomes = streamed_write_outcomes(metrics or Metrics())
        self._admission = admission or Admission(QuotaBook(Quota()))
        self._bb = blackboard
        self._subs = subscriptions
        self._access = access
        self._tenant = tenant
        self._stalls = StallWatch(write_timeout_s)
        self._verified = verified

    def _caller(self, context: Context) -> Caller:
        """The caller, once its tenant's request rate lets the call in."""
        who = caller(context, self._tenant, self._verified)
        self._admission.admit(who.tenant)
        return who

    @unary
    async def CreateConversation(self, r: pb.CreateConversationRequest, c: Context) -> Any:
        created = await self._bb.create_conversation(
            self._caller(c), r.id or _new_id(), dict(r.metadata), r.idle_ttl_ms
        )
        return convert.conversation(created)

    @unary
    async def GetConversation(self, r: pb.GetConversationRequest, c: Context) -> Any:
        return convert.conversation(await self._bb.get_conversation(self._caller(c), r.id))

    @unary
    async def ListConversations(self, r: pb.ListConversationsRequest, c: Context) -> Any:
        page, token = await self._bb.list_conversations(self._caller(c), r.page_size, r.page_token)
        return pb.ListConversationsResponse(
            conversations=[convert.conversation(x) for x in page], next_page_token=token
        )

    @unary
    async def DeleteConversation(self, r: pb.DeleteConversationRequest, c: Context) -> Any:
        who = self._caller(c)
        await self._bb.delete_conversation(who, r.id)
        self._access.forget(who.conversation(r.id))
        return pb.DeleteConversationResponse()

    @unary
    async def GrantRole(self, r: pb.GrantRoleRequest, c: Context) -> Any:
        await self._access.grant(self._caller(c), r.conversation_id, r.subject, r.role)
        return pb.GrantRoleResponse()

    @unary
    async def RevokeRole(self, r: pb.RevokeRoleRequest, c: Context) -> Any:
        revoked = await self._access.revoke(self._caller(c), r.conversation_id, r.subject)
        return pb.RevokeRoleResponse(revoked=revoked)

    @unary
    async def ListGrants(self, r: pb.ListGrantsRequest, c: Context) -> Any:
        grants = await self._access.list_grants(self._caller(c), r.conversation_id)
        return pb.ListGrantsResponse(
            grants=[pb.Grant(subject=s, role=_ROLES[role]) for s, role in grants]
        )

    @unary
    async def Get(self, r: pb.GetRequest, c: Context) -> Any:
        entry, revision = await self._bb.get(self._caller(c), r.conversation_id, r.key, r.revision)
        response = pb.GetResponse(revision=revision)
        convert.entry(entry, response.entry)
        return response

    @unary
    async def Range(self, r: pb.RangeRequest, c: Context) -> Any:
        page, token = await self._bb.range(
            self._caller(c), r.conversation_id, r.prefix, r.revision, r.page_size, r.page_token
        )
        response = pb.RangeResponse(revision=page.revision, next_page_token=token)
        for entry in page.entries:
            convert.entry(entry, response.entries.add(), with_value=not r.keys_only)
        return response

    @unary
    async def History(self, r: pb.HistoryRequest, c: Context) -> Any:
        exact = r.WhichOneof("selector") == "key"
        events, next_revision, compact = await self._bb.history(
            self._caller(c),
            r.conversation_id,
            r.key if exact else r.prefix,
            exact,
            r.from_revision,
            r.to_revision,
            r.page_size,
        )
        return pb.HistoryResponse(
            events=[convert.event(e, with_previous=r.with_previous) for e in events],
            next_revision=next_revision,
            compact_revision=compact,
        )

    @unary
    async def Put(self, r: pb.PutRequest, c: Context) -> Any:
        return await writes.put(self._bb, self._caller(c), r)

    @unary
    async def Delete(self, r: pb.DeleteRequest, c: Context) -> Any:
        return await writes.delete(self._bb, self._caller(c), r)

    @unary
    async def Append(self, r: pb.AppendRequest, c: Context) -> Any:
        return await writes.append(self._bb, self._caller(c), r)

    @unary
    async def Patch(self, r: pb.PatchRequest, c: Context) -> Any:
        written, data = await self._bb.patch(
            self._caller(c),
            r.conversation_id,
            r.key,
            r.merge_patch,
            convert.expect(r.expect, r.HasField("expect")),
            r.request_id,
            convert.fence(r.fence, r.HasField("fence")),
        )
        return pb.PatchResponse(
            result=convert.write_result(written),
            value=pb.Value(data=data, content_type="application/json"),
        )

    @unary
    async def Txn(self, r: pb.TxnRequest, c: Context) -> Any:
        result = await self._bb.txn(
            self._caller(c),
            r.conversation_id,
            tuple(convert.compare(x, i) for i, x in enumerate(r.compares)),
            convert.txn_ops(r.success, "success"),
            convert.txn_ops(r.failure, "failure"),
            r.request_id,
            convert.fence(r.fence, r.HasField("fence")),
        )
        return convert.txn_result(result)

    @unary
    async def Write(self, requests: AsyncIterator[pb.WriteStreamRequest], c: Context) -> None:
        access = self._access if self._verified else None
        stream = WriteStream(
            self._bb,
            access,
            self._caller(c),
            self._limits,
            self._outcomes,
            c,
            admit=self._admission.admit,
        )
        await stream.serve(requests, self._closing)

    def close(self) -> None:
        """At shutdown: Write streams answer what they hold and end, resumable."""
        self._closing.set()

    @unary
    async def Subscribe(self, r: pb.SubscribeRequest, c: Context) -> None:
        options = SubscribeOptions(r.prefix, r.start_revision, r.no_reset, r.with_previous)
        resume = r.start_revision - 1
        who = self._caller(c)
        with (
            self._admission.subscriber(who.tenant, r.conversation_id),
            self._stalls.watching() as writing,
        ):
            async for item in self._subs.stream(who, r.conversation_id, options):
                message = convert.stream_item(item, with_previous=r.with_previous)
                try:
                    written = await self._stalls.write(writing, c, message)
                except Exception:
                    if c.cancelled():
                        return  # the client went away mid-write
                    raise
                resume = resume_point(item, resume)
                if not written:  # a reader that stopped reading
                    # The message whose write was given up on still reaches the client
                    # before the status does (a stream's status follows its messages),
                    # so the resume point is after it.
                    raise SlowSubscriber(max(resume, 0), 0)


_ROLES = {Role.READER: pb.ROLE_READER, Role.WRITER: pb.ROLE_WRITER, Role.ADMIN: pb.ROLE_ADMIN}


def _new_id() -> str:
    return uuid.uuid4().hex
