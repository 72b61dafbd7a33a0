"""The blackboard.v1.Coordination servicer: unpack, call a service, pack."""

from __future__ import annotations

from typing import Any

import grpc

from blackboard.v1 import blackboard_pb2 as pb
from blackboard_server.api import convert
from blackboard_server.api.errors import unary
from blackboard_server.api.servicer import caller
from blackboard_server.domain.model import FenceKind
from blackboard_server.domain.quota import Quota
from blackboard_server.services.blackboard import Caller
from blackboard_server.services.coordination import CoordinationService
from blackboard_server.services.quotas import Admission, QuotaBook

Context = grpc.aio.ServicerContext[Any, Any]
LOCK = FenceKind.LOCK
ELECTION = FenceKind.ELECTION


class CoordinationServicer:
    def __init__(
        self,
        service: CoordinationService,
        *,
        tenant: str,
        verified: bool = False,
        admission: Admission | None = None,
    ) -> None:
        self._svc = service
        self._tenant = tenant
        self._verified = verified
        self._admission = admission or Admission(QuotaBook(Quota()))

    def _caller(self, context: Context) -> Caller:
        """The caller, once its tenant's request rate lets the call in."""
        who = caller(context, self._tenant, self._verified)
        self._admission.admit(who.tenant)
        return who

    @unary
    async def OpenSession(self, r: pb.OpenSessionRequest, c: Context) -> Any:
        session = await self._svc.open_session(self._caller(c), r.conversation_id, r.ttl_ms)
        return convert.session(session)

    @unary
    async def KeepAlive(self, r: pb.KeepAliveRequest, c: Context) -> Any:
        left = await self._svc.keep_alive(self._caller(c), r.conversation_id, r.session_id)
        return pb.KeepAliveResponse(ttl_ms=left)

    @unary
    async def CloseSession(self, r: pb.CloseSessionRequest, c: Context) -> Any:
        await self._svc.close_session(self._caller(c), r.conversation_id, r.session_id)
        return pb.CloseSessionResponse()

    @unary
    async def ListSessions(self, r: pb.ListSessionsRequest, c: Context) -> Any:
        sessions = await self._svc.sessions(self._caller(c), r.conversation_id)
        return pb.ListSessionsResponse(sessions=[convert.session(s) for s in sessions])

    @unary
    async def AcquireLock(self, r: pb.AcquireLockRequest, c: Context) -> Any:
        holder = await self._svc.acquire(
            self._caller(c), r.conversation_id, LOCK, r.name, r.session_id, b"", r.wait_ms
        )
        return convert.holder(holder)

    @unary
    async def ReleaseLock(self, r: pb.ReleaseLockRequest, c: Context) -> Any:
        await self._svc.release(
            self._caller(c), r.conversation_id, LOCK, r.name, r.session_id, r.token
        )
        return pb.ReleaseLockResponse()

    @unary
    async def GetLock(self, r: pb.GetLockRequest, c: Context) -> Any:
        holder = await self._svc.holder(self._caller(c), r.conversation_id, LOCK, r.name)
        return convert.holder(holder)

    @unary
    async def Campaign(self, r: pb.CampaignRequest, c: Context) -> Any:
        holder = await self._svc.acquire(
            self._caller(c),
            r.conversation_id,
            ELECTION,
            r.role,
            r.session_id,
            r.value,
            r.wait_ms,
        )
        return convert.holder(holder)

    @unary
    async def Proclaim(self, r: pb.ProclaimRequest, c: Context) -> Any:
        holder = await self._svc.proclaim(
            self._caller(c), r.conversation_id, r.role, r.session_id, r.token, r.value
        )
        return convert.holder(holder)

    @unary
    async def Resign(self, r: pb.ResignRequest, c: Context) -> Any:
        await self._svc.release(
            self._caller(c), r.conversation_id, ELECTION, r.role, r.session_id, r.token
        )
        return pb.ResignResponse()

    @unary
    async def GetLeader(self, r: pb.GetLeaderRequest, c: Context) -> Any:
        holder = await self._svc.holder(self._caller(c), r.conversation_id, ELECTION, r.role)
        return convert.holder(holder)

    @unary
    async def Observe(self, r: pb.ObserveRequest, c: Context) -> None:
        who = self._caller(c)
        with self._admission.subscriber(who.tenant, r.conversation_id):
            async with self._svc.observe(who, r.conversation_id, r.role) as updates:
                async for holder in updates:
                    update = pb.LeaderUpdate(has_leader=holder is not None)
                    if holder is not None:
                        update.leader.CopyFrom(convert.holder(holder))
                    await c.write(update)
