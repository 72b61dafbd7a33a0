"""The one place where a call is let in or turned away.

Installed only when `auth` is not none. Every method handler is wrapped once,
when the server registers it (api/handlers.py `Registrar`): before the handler
runs, the wrapper looks the method up in `domain.auth.REQUIREMENTS` (a method
not there is refused), authenticates the call's credentials (the
`authorization: Bearer` header, the client certificate), checks the tenant the
client may name in `x-tenant`, and authorizes the role on the conversation the
request names. The verified identity is then in `IDENTITY` for the handler
(api/servicer.py `caller`) and the access log (api/observe.py).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import grpc

from blackboard_server.api.errors import abort
from blackboard_server.domain.auth import REQUIREMENTS, Identity, Requirement
from blackboard_server.domain.errors import BlackboardError, MethodNotAllowed, TenantMismatch
from blackboard_server.services.access import Access

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
Context = grpc.aio.ServicerContext[Any, Any]

# The verified identity of the call being served (each RPC runs in a context of its own).
IDENTITY: ContextVar[Identity | None] = ContextVar("blackboard_identity", default=None)
AUTHORIZATION_HEADER = "authorization"
TENANT_HEADER = "x-tenant"
_BEARER = "bearer "


def credentials(context: Context, certificates: bool) -> tuple[str, str, bytes]:
    """The bearer token, the x-tenant header and (when `certificates`) the client
    certificate (PEM) of a call."""
    token = tenant = ""
    for key, value in context.invocation_metadata() or ():
        if key == AUTHORIZATION_HEADER:
            text = value if isinstance(value, str) else value.decode(errors="replace")
            if text[: len(_BEARER)].lower() == _BEARER:
                token = text[len(_BEARER) :].strip()
        elif key == TENANT_HEADER:
            tenant = value if isinstance(value, str) else value.decode(errors="replace")
    if not certificates:
        return token, tenant, b""
    certificate = next(iter(context.auth_context().get("x509_pem_cert", ())), b"")
    return token, tenant, certificate


class AuthGate:
    def __init__(self, access: Access) -> None:
        self._access = access

    def wrap(self, method: str, handler: Handler) -> Handler:
        """`handler` of `method` (`/package.Service/Method`), admitting only the calls
        `domain.auth.REQUIREMENTS` allows; a method not there is refused."""
        need = REQUIREMENTS.get(method)
        return _refuse(method) if need is None else self._admitting(need, handler)

    async def _admit(self, need: Requirement, request: Any, context: Context) -> None:
        """Returns when the call may proceed; otherwise aborts it with the reason."""
        if need.public:
            return
        try:
            token, tenant, certificate = credentials(context, self._access.certificates)
            who = self._access.authenticate(token, certificate)
            if tenant and tenant != who.tenant:
                raise TenantMismatch(tenant)
            if not need.per_item:
                conversation = str(getattr(request, need.field)) if need.field else ""
                await self._access.authorize(who, need, conversation)
        except BlackboardError as error:
            await abort(context, error)
        IDENTITY.set(who)

    def _admitting(self, need: Requirement, handler: Handler) -> Handler:
        behaviour: Any
        if handler.unary_unary is not None:
            behaviour, make = handler.unary_unary, grpc.unary_unary_rpc_method_handler
        elif handler.unary_stream is not None:
            behaviour, make = handler.unary_stream, grpc.unary_stream_rpc_method_handler
        elif handler.stream_unary is not None:
            behaviour, make = handler.stream_unary, grpc.stream_unary_rpc_method_handler
        else:
            behaviour, make = handler.stream_stream, grpc.stream_stream_rpc_method_handler
        streaming_request = handler.request_streaming
        if streaming_request and need.field and not need.per_item:
            raise TypeError("a streaming request names no conversation to authorize")
        admit = self._admit

        # A streaming response is either yielded (an async generator) or written with
        # context.write (a coroutine, as the servicers here do): wrap each as it is.
        if inspect.isasyncgenfunction(behaviour):

            async def admitted_generator(request: Any, context: Context) -> AsyncIterator[Any]:
                await admit(need, None if streaming_request else request, context)
                async for message in behaviour(request, context):
                    yield message

            admitted: Any = admitted_generator
        else:

            async def admitted_call(request: Any, context: Context) -> Any:
                await admit(need, None if streaming_request else request, context)
                return await behaviour(request, context)

            admitted = admitted_call
        return make(
            admitted,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _refuse(method: str) -> Handler:
    async def refuse(request: Any, context: Context) -> None:
        await abort(context, MethodNotAllowed(method))

    # Raw bytes in: the request of an unknown method cannot be parsed, nor need it be.
    return grpc.unary_unary_rpc_method_handler(refuse)
